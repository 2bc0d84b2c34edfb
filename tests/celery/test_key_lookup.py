"""The key is enough (issue 13, item 10): both bridges learn their connection from
the API key (`GET /api/key`) and check a given connection id against it."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from sluice.client.keyinfo import (  # noqa: E402
    KeyRefused,
    SluiceUnreachable,
    key_info,
    resolve_connection,
)

from .checks import ROOT  # noqa: E402
from .rig import (  # noqa: E402
    Agent,
    CeleryWorker,
    Collector,
    cleanup_broker,
    publisher,
    redis_broker_url,
)


def agent_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sluice", "celery-agent", "--broker", "memory://", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def read_key(server, account) -> str:
    session = account.login(server.url)
    response = session.post(
        f"{server.url}/api/connections/{account.connection_id}/keys", json={"scope": "read"}
    )
    assert response.status_code == 201, response.text
    return response.json()["apiKey"]


# -- the lookup ----------------------------------------------------------------------


def test_resolve_connection_from_the_key_alone(server, account):
    info = resolve_connection(server.url, account.api_key)
    assert (info.connection_id, info.name, info.scope) == (
        account.connection_id,
        "Test cluster",
        "write",
    )
    # A given id, in any UUID spelling, is checked and accepted.
    assert resolve_connection(server.url, account.api_key, account.connection_id.upper())


def test_resolve_connection_refuses_clearly(server, account, other_account):
    with pytest.raises(KeyRefused, match="does not match the API key"):
        resolve_connection(server.url, account.api_key, other_account.connection_id)
    with pytest.raises(KeyRefused, match="read key .* cannot ingest"):
        resolve_connection(server.url, read_key(server, account))
    with pytest.raises(KeyRefused, match="refused the API key"):
        resolve_connection(server.url, "sk_live_forged")


def test_network_errors_are_retried_with_backoff():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    delays: list[float] = []
    with pytest.raises(SluiceUnreachable, match="gave up"):
        key_info(url, "sk_live_x", max_wait=1_000, sleep=delays.append, backoff_max=400)
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] <= 400


# -- celery-agent --------------------------------------------------------------------


def test_agent_refuses_a_mismatching_connection(server, account, other_account):
    done = agent_command(
        "--url",
        server.url,
        "--api-key",
        account.api_key,
        "--connection",
        other_account.connection_id,
    )
    assert done.returncode == 1
    assert "does not match the API key" in done.stderr
    assert account.connection_id in done.stderr and "Traceback" not in done.stderr


def test_agent_refuses_a_read_key_and_a_bad_key(server, account):
    done = agent_command("--url", server.url, "--api-key", read_key(server, account))
    assert done.returncode == 1 and "cannot ingest" in done.stderr
    done = agent_command("--url", server.url, "--api-key", "sk_live_forged")
    assert done.returncode == 1 and "refused the API key" in done.stderr
    assert "Traceback" not in done.stderr


def test_agent_with_only_url_and_key_streams(server, account, broker_redis_url, queue):
    broker = redis_broker_url(broker_redis_url)
    col = Collector(server.url, account)
    agent = Agent(broker, server.url, account, "--queue", queue, with_connection=False)
    worker = CeleryWorker(broker, queue, pool="threads")
    try:
        agent.start()
        worker.start()
        col.wait(lambda c: c.workers(worker.nodename), what="worker online")
        task_id = publisher(broker, queue).send_task("sluice_test.add", args=(1, 2)).id
        col.wait(lambda c: "completed" in c.states(task_id), what="the task completed")
        assert agent.stop() == 0
    finally:
        for proc in (worker, agent):
            if proc.process and proc.process.poll() is None:
                proc.stop(signal.SIGKILL)
        cleanup_broker(broker, queue)
        col.close()


# -- install() ------------------------------------------------------------------------


def test_install_learns_the_connection_from_the_key(server, account, monkeypatch):
    import sluice.celery

    monkeypatch.delenv("SLUICE_CONNECTION_ID", raising=False)
    app = publisher("memory://", "q")
    integration = sluice.celery.install(app, url=server.url, api_key=account.api_key)
    try:
        assert integration is not None and integration.connection_id == account.connection_id
    finally:
        integration.uninstall()


def test_install_refuses_a_mismatching_connection(server, account, other_account, caplog):
    import sluice.celery

    app = publisher("memory://", "q")
    with caplog.at_level(logging.ERROR, logger="sluice.celery"):
        integration = sluice.celery.install(
            app,
            url=server.url,
            api_key=account.api_key,
            connection_id=other_account.connection_id,
        )
    assert integration is None
    assert "does not match the API key" in caplog.text
    assert requests.get(f"{server.url}/api/health", timeout=5).ok
