"""What a person debugs with, end to end: a real worker runs tasks that fail and
succeed; the agent (from Celery's events) and the integration (inside the worker
and the publisher) each report to a connection of their own; the job detail API
(`GET /api/connections/<id>/jobs/<task id>`, with the connection's API key) shows
the arguments, the result and the traceback, the same from both. With argument
capture off (`celery-agent --no-args`, SLUICE_CAPTURE_ARGS=0 in the worker,
`install(app, capture_args=False)` in the publisher), a marker passed as an
argument is nowhere in either connection's Redis keys: not in the stream's
entries, not in the job index's hashes, sorted sets or anything else.
"""

from __future__ import annotations

import signal
import uuid

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from ..util import raw_redis, wait_until  # noqa: E402
from .rig import (  # noqa: E402
    Agent,
    CeleryWorker,
    cleanup_broker,
    publisher,
    redis_broker_url,
)


@pytest.fixture
def procs(broker_redis_url, queue):
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop(signal.SIGKILL)
    cleanup_broker(redis_broker_url(broker_redis_url), queue)


def detail(base_url: str, account, task_id: str) -> dict | None:
    """The job detail API's `data` for a Celery task id, None while there is no such job."""
    response = requests.get(
        f"{base_url}/api/connections/{account.connection_id}/jobs/{task_id}",
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_for_outcome(base_url: str, account, task_id: str, state: str) -> dict:
    """The job once its timeline holds `state` (the integration's events come from
    several processes: the latest state is not always the last one they post)."""

    def reached() -> dict | None:
        job = detail(base_url, account, task_id)
        if job and state in [t["state"] for t in job["timeline"]]:
            return job
        return None

    return wait_until(reached, 30, f"{task_id} {state} in connection {account.connection_id}")


def connection_contents(redis_url: str, connection_id: str) -> tuple[bytes, set[str]]:
    """Everything stored under the connection's keys (`sluice:{<id>}:*`), names and
    values, whatever the key's type; and the types seen."""
    r = raw_redis(redis_url)
    chunks: list[bytes] = []
    kinds: set[str] = set()
    try:
        for key in r.scan_iter(match=f"sluice:{{{connection_id}}}:*", count=1000):
            kind = r.type(key).decode()
            kinds.add(kind)
            chunks.append(key)
            if kind == "stream":
                for entry_id, fields in r.xrange(key):
                    chunks += [entry_id, *fields.keys(), *fields.values()]
            elif kind == "hash":
                for field, value in r.hgetall(key).items():
                    chunks += [field, value]
            elif kind == "zset":
                chunks += r.zrange(key, 0, -1)
            elif kind == "set":
                chunks += list(r.smembers(key))
            elif kind == "list":
                chunks += r.lrange(key, 0, -1)
            elif kind == "string":
                chunks.append(r.get(key) or b"")
            else:
                raise AssertionError(f"{key!r}: a {kind} this scan does not read")
    finally:
        r.close()
    return b"\n".join(chunks), kinds


def start_both_bridges(
    server, integration_account, agent_account, broker: str, queue: str, procs, *, capture: bool
):
    """A worker with task events on (for the agent) and the integration installed
    (reporting to `integration_account`), and the agent (to `agent_account`)."""
    env = {
        "TEST_SLUICE_INSTALL": "1",
        "SLUICE_URL": server.url,
        "SLUICE_API_KEY": integration_account.api_key,
        "SLUICE_CONNECTION_ID": integration_account.connection_id,
        "SLUICE_CAPTURE_ARGS": "1" if capture else "0",
    }
    args = ("--queue", queue) + (() if capture else ("--no-args",))
    agent = Agent(broker, server.url, agent_account, *args)
    procs.append(agent.start())
    assert ("argument capture off" in agent.output()) is not capture
    worker = CeleryWorker(broker, queue, events=True, env=env)
    procs.append(worker.start())


def test_the_detail_api_shows_arguments_result_and_traceback_the_same_from_both_bridges(
    server, account, other_account, redis_url, broker_redis_url, queue, procs
):
    import sluice.celery

    broker = redis_broker_url(broker_redis_url)
    integration_account, agent_account = account, other_account
    start_both_bridges(server, account, other_account, broker, queue, procs, capture=True)
    pub = publisher(broker, queue)
    integration = sluice.celery.install(
        pub,
        url=server.url,
        api_key=integration_account.api_key,
        connection_id=integration_account.connection_id,
    )
    marker = f"marker-{uuid.uuid4().hex}"
    try:
        failing = pub.send_task("sluice_test.boom", (marker,), queue=queue).id
        adding = pub.send_task("sluice_test.add", kwargs={"x": 40, "y": 2}, queue=queue).id
        jobs = {
            bridge: (
                wait_for_outcome(server.url, acc, failing, "failed"),
                wait_for_outcome(server.url, acc, adding, "completed"),
            )
            for bridge, acc in (("integration", integration_account), ("agent", agent_account))
        }
    finally:
        integration.uninstall()
    for bridge, (failed, done) in jobs.items():
        assert failed["args"] == f"('{marker}',)" and failed["kwargs"] == "{}", bridge
        assert failed["traceback"].startswith("Traceback (most recent call last)"), bridge
        assert failed["traceback"].rstrip().endswith(f"ValueError: {marker}"), bridge
        assert "raise ValueError(message)" in failed["traceback"], bridge
        assert done["args"] == "()" and done["kwargs"] == "{'x': 40, 'y': 2}", bridge
        assert done["result"] == "42", bridge
        assert "result" not in failed
    # One mapping: both bridges give the detail view the same data.
    (i_failed, i_done), (a_failed, a_done) = jobs["integration"], jobs["agent"]
    for key in ("args", "kwargs", "traceback"):
        assert i_failed[key] == a_failed[key], key
    for key in ("args", "kwargs", "result"):
        assert i_done[key] == a_done[key], key
    # The scan below (the capture-off test's) does find a marker that was sent.
    for acc in (integration_account, agent_account):
        contents, kinds = connection_contents(redis_url, acc.connection_id)
        assert {"stream", "hash", "zset"} <= kinds
        assert marker.encode() in contents


def test_without_argument_capture_no_argument_is_stored_anywhere(
    server, account, other_account, redis_url, broker_redis_url, queue, procs
):
    import sluice.celery

    broker = redis_broker_url(broker_redis_url)
    integration_account, agent_account = account, other_account
    start_both_bridges(server, account, other_account, broker, queue, procs, capture=False)
    pub = publisher(broker, queue)
    integration = sluice.celery.install(
        pub,
        url=server.url,
        api_key=integration_account.api_key,
        connection_id=integration_account.connection_id,
        capture_args=False,
    )
    marker = f"marker-{uuid.uuid4().hex}"
    try:
        # str + int: a TypeError whose message and traceback do not hold the marker.
        failing = pub.send_task("sluice_test.add", (marker, 1), queue=queue).id
        # Its result holds the marker: results are user data too.
        positional = pub.send_task("sluice_test.add", (marker, "!"), queue=queue).id
        keyword = pub.send_task("sluice_test.add", kwargs={"x": "?", "y": marker}, queue=queue).id
        jobs = {
            bridge: (
                wait_for_outcome(server.url, acc, failing, "failed"),
                wait_for_outcome(server.url, acc, positional, "completed"),
                wait_for_outcome(server.url, acc, keyword, "completed"),
            )
            for bridge, acc in (("integration", integration_account), ("agent", agent_account))
        }
    finally:
        integration.uninstall()
    for bridge, (failed, *done) in jobs.items():
        # What is not argument data is still there to debug with.
        assert "TypeError" in failed["error"], bridge
        assert failed["traceback"].startswith("Traceback (most recent call last)"), bridge
        assert "return x + y" in failed["traceback"], bridge
        for job in (failed, *done):
            assert not {"args", "kwargs", "result"} & set(job), (bridge, job)
    for acc in (integration_account, agent_account):
        contents, kinds = connection_contents(redis_url, acc.connection_id)
        assert {"stream", "hash", "zset"} <= kinds
        assert marker.encode() not in contents, acc.connection_id
        assert b"Traceback" in contents and b"sluice_test.add" in contents  # it did read them
