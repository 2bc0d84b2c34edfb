"""The agent's command (`sluice.integrations.celery.agent`) without a broker; what it
does with real brokers and workers is in test_real.py and test_faults.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sluice.integrations.celery.agent import EXIT_MISSING_PACKAGE

from .checks import ROOT, heavy_imports
from .rig import redis_broker_url

#: A sitecustomize.py that hides modules named in SLUICE_TEST_HIDE_MODULES.
SHIMS = ROOT / "tests" / "celery" / "shims"


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


def test_no_actions_reaches_the_agent_and_the_help_says_what_it_does(monkeypatch):
    from click.testing import CliRunner

    from sluice.integrations.celery import agent

    seen: list[bool] = []
    monkeypatch.setattr(agent, "run_agent", lambda **kw: seen.append(kw["actions"]) or 0)
    required = ["--broker", "memory://", "--url", "http://x", "--api-key", "k"]
    runner = CliRunner()
    for args, env in (([], {}), (["--no-actions"], {}), ([], {"SLUICE_ACTIONS": "0"})):
        result = runner.invoke(agent.celery_agent_command, required + args, env=env)
        assert result.exit_code == 0, result.output
    assert seen == [True, False, False]
    help_text = " ".join(runner.invoke(agent.celery_agent_command, ["--help"]).output.split())
    assert "--actions / --no-actions" in help_text and "SLUICE_ACTIONS" in help_text
    assert "revoke, terminate, retry, bulk retry, pool grow/shrink, shutdown" in help_text
    assert "capture_call=True" in help_text


@pytest.mark.parametrize("hidden", ["redis", "packaging"])
def test_a_missing_transport_library_stops_the_agent_at_once_naming_the_package(
    server, account, broker_redis_url, hidden
):
    """What a user with only part of the requirements sees: kombu's Redis transport
    needs redis-py and `packaging`. Hidden here by a sitecustomize shim (the import
    machinery raises ModuleNotFoundError as if they were not installed); the broker and
    the server are real."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SHIMS), str(ROOT)]),
        "SLUICE_TEST_HIDE_MODULES": hidden,
    }
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluice",
            "celery-agent",
            "--broker",
            redis_broker_url(broker_redis_url),
            "--url",
            server.url,
            "--api-key",
            account.api_key,
            "--connection",
            account.connection_id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == EXIT_MISSING_PACKAGE, (out.returncode, out.stderr[-2000:])
    assert f"the Python package '{hidden}' is not installed" in out.stderr, out.stderr
    assert f"pip install {hidden}" in out.stderr
    assert "reconnecting" not in out.stderr  # not taken for a broker blip
    assert elapsed < 20, elapsed
