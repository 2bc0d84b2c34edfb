"""The agent's command (`sluice.integrations.celery.agent`) without a broker; what it
does with real brokers and workers is in test_real.py and test_faults.py."""

from __future__ import annotations

import subprocess
import sys

from .checks import ROOT, heavy_imports


def test_the_command_module_imports_only_click():
    # `python -m sluice --help` must work where Celery is not installed.
    assert heavy_imports("sluice.integrations.celery.agent") == {"click"}


def test_the_cli_runs_the_agent_command():
    out = subprocess.run(
        [sys.executable, "-m", "sluice", "celery-agent", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "Watch a Celery deployment" in out.stdout and "--broker" in out.stdout
