"""Operator actions end to end (issue 13 item 8): real Celery workers (prefork, Redis
broker) running `sluice.celery.install(app, capture_call=True)`, the real
`celery-agent` carrying out commands, the real Sluice server and its stream.

Each action goes in through the HTTP API with the owner's session and is awaited
where it shows: the `command:result` on the stream, the job index, Celery's own
state (`inspect().stats()`, the worker process). Every wait is a poll with a
deadline, never a bare sleep.

The workers report jobs through the integration only (no `-E`; the agent runs
with `--no-enable-events` and captures no task events): the captured call is on
the integration's events, and a second producer's identical `failed` (same
producer id, without the call) could win the de-duplication. docs/celery.md
says so.
"""

from __future__ import annotations

import datetime
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

import sluice.celery  # noqa: E402
from sluice.integrations.celery.actions import NO_CALL  # noqa: E402
from sluice.integrations.celery.mapping import MAX_CALL_BYTES  # noqa: E402

from ..util import ingest, job_event  # noqa: E402
from .rig import (  # noqa: E402
    Agent,
    CeleryWorker,
    Collector,
    cleanup_broker,
    integration_env,
    publisher,
    redis_broker_url,
    wait_until,
)


@pytest.fixture
def procs(queue, broker_redis_url):
    started: list = []
    yield started
    for proc in reversed(started):
        # A worker: cold shutdown (its pool processes go too); the agent: its SIGTERM.
        proc.stop(signal.SIGQUIT if isinstance(proc, CeleryWorker) else signal.SIGTERM)
    cleanup_broker(redis_broker_url(broker_redis_url), queue)


def worker_env(server, account, *, capture_call: bool = True) -> dict[str, str]:
    return integration_env(server, account, SLUICE_CAPTURE_CALL="1" if capture_call else "0")


def key_get(server, account, path: str) -> requests.Response:
    return requests.get(
        f"{server.url}/api/connections/{account.connection_id}{path}",
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )


def job(server, account, ref: str) -> dict | None:
    reply = key_get(server, account, f"/jobs/{ref}")
    if reply.status_code == 404:
        return None
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def job_in(server, account, ref: str, *states: str, timeout: float = 45) -> dict:
    def seen():
        found = job(server, account, ref)
        return found if found is not None and found["state"] in states else None

    return wait_until(seen, timeout, f"job {ref} in {states}", interval=0.2)


class Acting:
    """One test's moving parts: worker(s), the agent, a publisher that reports
    through the integration, the owner's session and the stream."""

    def __init__(self, server, account, broker: str, queue: str, procs: list) -> None:
        self.server, self.account, self.broker, self.queue = server, account, broker, queue
        self.procs = procs
        self.session = account.login(server.url)
        self.stream = Collector(server.url, account)
        self.pub = publisher(broker, queue)
        self.integration = sluice.celery.install(
            self.pub, url=server.url, api_key=account.api_key, capture_call=True
        )
        assert self.integration is not None

    def worker(self, *extra: str, capture_call: bool = True) -> CeleryWorker:
        worker = CeleryWorker(
            self.broker,
            self.queue,
            events=False,
            env=worker_env(self.server, self.account, capture_call=capture_call),
            extra_args=extra,
        )
        self.procs.append(worker)
        return worker.start()

    def agent(self, *extra: str) -> Agent:
        agent = Agent(self.broker, self.server.url, self.account, "--no-enable-events", *extra)
        self.procs.append(agent)
        return agent.start()

    def send(self, name: str, *args, **kwargs) -> str:
        task_id = self.pub.send_task(name, args=args, kwargs=kwargs, queue=self.queue).id
        self.integration.sender.flush(5)
        return str(task_id)

    def act(self, path: str, body: dict) -> str:
        reply = self.session.post(
            f"{self.server.url}/api/connections/{self.account.connection_id}{path}",
            json=body,
            timeout=10,
        )
        assert reply.status_code == 202, (reply.status_code, reply.text)
        return reply.json()["commandId"]

    def result(self, command_id: str, timeout: float = 45) -> dict:
        def found(c):
            return any(
                n == "command:result" and d.get("commandId") == command_id for n, _, d in c.events
            )

        events = self.stream.wait(found, timeout, f"command:result of {command_id}")
        return next(
            d for n, _, d in events if n == "command:result" and d.get("commandId") == command_id
        )

    def close(self) -> None:
        self.integration.uninstall()
        self.stream.close()


@pytest.fixture
def acting(server, account, broker_redis_url, queue, procs):
    rig = Acting(server, account, redis_broker_url(broker_redis_url), queue, procs)
    yield rig
    rig.close()


# -- the captured call (works with any server: extensions are free-form) ------------------


def test_capture_call_puts_the_real_call_on_failed_jobs_and_the_detail_shows_it(acting):
    acting.worker()
    ok = acting.send("sluice_test.fail", 1, "two", {"k": [3]}, x=None)
    big = acting.send("sluice_test.fail", "x" * (MAX_CALL_BYTES + 1))
    when = acting.pub.send_task(
        "sluice_test.fail",
        kwargs={"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)},
        queue=acting.queue,
    ).id
    for ref in (ok, big, when):
        job_in(acting.server, acting.account, ref, "failed")
    detail = job(acting.server, acting.account, ok)
    assert detail["extensions"]["call"] == {"args": [1, "two", {"k": [3]}], "kwargs": {"x": None}}
    # Too large for 16 KiB (or the server's extensions limit), or not JSON: said, not sent.
    big_ext = job(acting.server, acting.account, big)["extensions"]
    assert big_ext["callSkipped"] == "too large" and "call" not in big_ext
    when_ext = job(acting.server, acting.account, when)["extensions"]
    assert when_ext["callSkipped"] == "not JSON" and "call" not in when_ext


# -- actions (need the server's actions API and command stream) ----------------------------


def needs_commands_api(server, account):
    reply = key_get(server, account, "/commands?wait=0")
    if reply.status_code in (404, 405):
        pytest.skip("this server has no GET /api/connections/<id>/commands yet")


def test_revoke_a_queued_job_and_terminate_a_running_one(acting):
    needs_commands_api(acting.server, acting.account)
    worker = acting.worker("-c", "1")  # one process: a second job waits behind the first
    acting.agent()
    running = acting.send("sluice_test.sleep", 60)
    job_in(acting.server, acting.account, running, "active")
    waiting = acting.send("sluice_test.add", 1, 2)
    job_in(acting.server, acting.account, waiting, "queued")

    revoke = acting.act(f"/jobs/{waiting}/actions", {"action": "revoke"})
    result = acting.result(revoke)
    assert result["status"] == "done", result
    assert result["action"] == "revoke"
    # A broadcast: every worker on the broker may answer (other tests' too); ours, when
    # its answer came in time, says ok. That the revoke worked is what Celery does next.
    assert result["detail"]["replies"].get(worker.nodename, "ok") == "ok"

    terminate = acting.act(f"/jobs/{running}/actions", {"action": "terminate", "signal": "SIGKILL"})
    result = acting.result(terminate)
    assert result["status"] == "done", result
    assert result["detail"]["signal"] == "SIGKILL"
    # Celery kills the process running it and reports it cancelled (terminated) ...
    killed = job_in(acting.server, acting.account, running, "cancelled", "failed")
    assert killed["state"] == "cancelled", killed
    assert killed["extensions"].get("terminated") is True
    # ... and the revoked job, its turn come, is cancelled without ever running.
    revoked = job_in(acting.server, acting.account, waiting, "cancelled", "completed")
    assert revoked["state"] == "cancelled", revoked
    # Cancelled jobs carry their call too (they can be retried).
    assert revoked["extensions"]["call"] == {"args": [1, 2], "kwargs": {}}
    timeline = job(acting.server, acting.account, waiting)["timeline"]
    assert "active" not in [entry["state"] for entry in timeline], timeline


def test_retry_a_failed_job_runs_it_again_linked_to_the_original(acting, tmp_path: Path):
    needs_commands_api(acting.server, acting.account)
    acting.worker()
    acting.agent()
    original = acting.send("sluice_test.fail_then_ok", str(tmp_path / "once"))
    failed = job_in(acting.server, acting.account, original, "failed")
    assert failed["extensions"]["call"] == {"args": [str(tmp_path / "once")], "kwargs": {}}

    command = acting.act(f"/jobs/{failed['id']}/actions", {"action": "retry"})
    result = acting.result(command)
    assert result["status"] == "done", result
    new_id = result["detail"]["newJobId"]
    assert new_id != original
    new = job_in(acting.server, acting.account, new_id, "completed", "failed")
    assert new["state"] == "completed", new
    assert new["name"] == "sluice_test.fail_then_ok" and new["queue"] == acting.queue
    # The link survives the new job's own events (the integration reads the agent's header).
    assert new["extensions"]["retryOf"] == original
    queued = [d for d in acting.stream.jobs(new_id) if d["state"] == "queued"]
    assert any(d.get("extensions", {}).get("retryOf") == original for d in queued), queued
    # The original stays what it was: failed.
    assert job(acting.server, acting.account, original)["state"] == "failed"


def test_retry_without_a_captured_call_fails_with_the_clear_error(acting):
    needs_commands_api(acting.server, acting.account)
    acting.agent()
    # A failed job from a producer that captured no call (the integration without
    # capture_call, the agent, any other producer).
    external = f"t-{uuid.uuid4()}"
    reply = ingest(
        acting.server.url,
        acting.account.api_key,
        acting.account.connection_id,
        [job_event(acting.account.connection_id, external, "failed", name="sluice_test.add")],
    )
    assert reply.status_code in (200, 202), reply.text
    job_in(acting.server, acting.account, external, "failed")
    result = acting.result(acting.act(f"/jobs/{external}/actions", {"action": "retry"}))
    assert result["status"] == "failed", result
    assert result["detail"]["error"] == NO_CALL
    assert "capture_call=True" in result["detail"]["error"]


def test_bulk_retry_resends_every_failed_job_of_the_filter(acting, tmp_path: Path):
    needs_commands_api(acting.server, acting.account)
    acting.worker()
    acting.agent()
    originals = [acting.send("sluice_test.fail_then_ok", str(tmp_path / f"f{i}")) for i in range(3)]
    for ref in originals:
        job_in(acting.server, acting.account, ref, "failed")
    command = acting.act(
        "/jobs/actions", {"action": "retry", "filter": {"state": "failed", "queue": acting.queue}}
    )
    result = acting.result(command)
    assert result["status"] == "done", result
    detail = result["detail"]
    assert detail["retried"] == 3 and detail["failed"] == 0, detail
    assert len(detail["newJobIds"]) == 3
    links = set()
    for new_id in detail["newJobIds"]:
        new = job_in(acting.server, acting.account, new_id, "completed", "failed")
        assert new["state"] == "completed", new
        links.add(new["extensions"]["retryOf"])
    assert links == set(originals)


def pool_size(pub, nodename: str) -> int | None:
    stats = pub.control.inspect(destination=[nodename], timeout=2).stats() or {}
    pool = (stats.get(nodename) or {}).get("pool") or {}
    processes = pool.get("processes")
    return len(processes) if isinstance(processes, list) else None


def test_pool_grow_and_shrink_change_the_workers_pool(acting):
    needs_commands_api(acting.server, acting.account)
    worker = acting.worker()  # -c 2
    acting.agent()
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 2, 20, "a pool of 2")

    grow = acting.act(f"/workers/{worker.nodename}/actions", {"action": "pool_grow", "n": 2})
    result = acting.result(grow)
    assert result["status"] == "done", result
    assert result["detail"]["replies"] == {worker.nodename: "ok"}
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 4, 30, "a pool of 4")

    shrink = acting.act(f"/workers/{worker.nodename}/actions", {"action": "pool_shrink"})
    assert acting.result(shrink)["status"] == "done"
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 3, 30, "a pool of 3")


def test_shutdown_stops_the_worker(acting):
    needs_commands_api(acting.server, acting.account)
    worker = acting.worker()
    agent = acting.agent()
    command = acting.act(f"/workers/{worker.nodename}/actions", {"action": "shutdown"})
    result = acting.result(command)
    assert result["status"] == "done", result
    wait_until(lambda: worker.process.poll() is not None, 30, "the worker to exit")
    assert "Got shutdown from remote" in worker.output()
    # The agent itself stops at once on SIGTERM, its long poll (up to 25 s) cut short.
    started = time.monotonic()
    assert agent.stop(signal.SIGTERM) == 0, agent.output()[-2000:]
    assert time.monotonic() - started < 10


def test_no_actions_leaves_commands_unanswered_until_an_agent_with_actions_runs(acting):
    needs_commands_api(acting.server, acting.account)
    worker = acting.worker()
    quiet = acting.agent("--no-actions")
    quiet.wait_for_output("operator actions off (--no-actions)")
    command = acting.act(f"/workers/{worker.nodename}/actions", {"action": "pool_grow"})
    # A bounded look (not synchronisation): nothing answers while only it runs.
    with pytest.raises(AssertionError, match="timed out"):
        acting.result(command, timeout=5)
    assert pool_size(acting.pub, worker.nodename) == 2
    # The command was there all along: an agent with actions (within 60 s) carries it out.
    quiet.stop()
    acting.agent()
    assert acting.result(command)["status"] == "done"
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 3, 30, "a pool of 3")
