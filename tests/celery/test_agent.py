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


def test_no_args_reaches_the_agent_from_the_option_or_the_environment(monkeypatch):
    from click.testing import CliRunner

    from sluice.integrations.celery import agent

    seen: list[bool] = []
    monkeypatch.setattr(agent, "run_agent", lambda **kw: seen.append(kw["capture_args"]) or 0)
    required = ["--broker", "memory://", "--url", "http://x", "--api-key", "k", "--connection", "c"]
    runner = CliRunner()
    for args, env in (
        ([], {}),
        (["--no-args"], {}),
        ([], {"SLUICE_CAPTURE_ARGS": "0"}),
        ([], {"SLUICE_CAPTURE_ARGS": "false"}),
        (["--args"], {"SLUICE_CAPTURE_ARGS": "0"}),  # the option wins over the environment
    ):
        result = runner.invoke(agent.celery_agent_command, required + args, env=env)
        assert result.exit_code == 0, result.output
    assert seen == [True, False, False, False, True]
    # A value that is not yes/no stops the agent before it starts, with the reason.
    result = runner.invoke(
        agent.celery_agent_command, required, env={"SLUICE_CAPTURE_ARGS": "nope"}
    )
    assert result.exit_code == 2, result.output
    assert "'nope' is not a valid boolean" in result.output
    help_text = runner.invoke(agent.celery_agent_command, ["--help"]).output
    assert "--no-args" in help_text and "SLUICE_CAPTURE_ARGS" in help_text
