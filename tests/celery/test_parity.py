"""The same picture from either producer (issue 13, item 4): one workload on a
real prefork worker, once watched by the agent (Celery's events) and once
reported by the in-worker integration (signals), read back through the job,
worker and queue APIs of the real server; final states, error strings, queue
depths and the worker's active count must agree. Every wait is a poll with a
deadline, never a bare sleep."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from .rig import (  # noqa: E402
    BROKERS,
    Agent,
    CeleryWorker,
    broker_for,
    cleanup_broker,
    integration_env,
    publisher,
    redis_broker_url,
    wait_until,
)

#: The workload: role -> (task, args). Sent in this order to a worker running one
#: task at a time and prefetching one, so while `slow` runs, `ok` is reserved by
#: the worker and the four after it wait in the queue.
WORKLOAD: list[tuple[str, str, tuple[Any, ...]]] = [
    ("slow", "sluice_test.sleep", (3,)),
    ("ok", "sluice_test.add", (2, 3)),
    ("boom", "sluice_test.boom", ("kaput",)),
    ("flaky", "sluice_test.flaky", (1, 0.2)),
    ("more", "sluice_test.add", (1, 1)),
    ("last", "sluice_test.add", (4, 4)),
]
WAITING_WHILE_SLOW = len(WORKLOAD) - 2


def api(server, account, path: str) -> Any:
    reply = requests.get(
        f"{server.url}/api/connections/{account.connection_id}{path}",
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def run_workload(producer: str, start_server, account, broker: str, queue: str) -> dict:
    """Run WORKLOAD with `producer` watching; what the APIs showed along the way."""
    server = start_server()
    procs: list = []
    seen: dict[str, Any] = {}
    try:
        if producer == "agent":
            worker = CeleryWorker(broker, queue, extra_args=("-c", "1"))
            procs.append(Agent(broker, server.url, account).start())
        else:
            env = integration_env(server, account)
            worker = CeleryWorker(broker, queue, events=False, env=env, extra_args=("-c", "1"))
        procs.append(worker.start())
        pub = publisher(broker, queue)
        ids = {role: pub.send_task(task, args, queue=queue).id for role, task, args in WORKLOAD}

        def worker_snapshot() -> dict | None:
            return next((w for w in api(server, account, "/workers")
                         if w["externalId"] == worker.nodename), None)  # fmt: skip

        def queue_depth() -> int | None:
            found = [q for q in api(server, account, "/queues") if q["name"] == queue]
            return found[0]["depth"] if found else None

        def job(role: str) -> dict | None:
            for j in api(server, account, f"/jobs?q={ids[role]}&limit=1"):
                if j["externalId"] == ids[role]:
                    return j
            return None

        # While `slow` runs: the worker is busy with one task, `ok` is reserved on it,
        # and the rest wait in the queue, as the broker counts them.
        def slow_running() -> bool:
            w, slow = worker_snapshot(), job("slow")
            return bool(
                w and w["activeJobs"] == 1 and w["state"] == "busy"
                and slow and slow["state"] == "active"
                and queue_depth() == WAITING_WHILE_SLOW
            )  # fmt: skip

        wait_until(slow_running, 30, f"{producer}: slow running, {WAITING_WHILE_SLOW} waiting")
        reserved = job("ok")
        assert reserved is not None
        seen["reserved"] = (reserved["state"], reserved.get("workerId") == worker.nodename)

        def all_final() -> bool:
            jobs = {role: job(role) for role in ids}
            if any(j is None or j["state"] not in ("completed", "failed") for j in jobs.values()):
                return False
            seen["jobs"] = jobs
            return True

        wait_until(all_final, 60, f"{producer}: every job finished")

        def settled() -> bool:
            w = worker_snapshot()
            return bool(w and w["activeJobs"] == 0 and queue_depth() == 0)

        wait_until(settled, 30, f"{producer}: worker idle and queue empty")
        flaky = api(server, account, f"/jobs/{ids['flaky']}")
        seen["flaky_retry_errors"] = [
            t.get("error") for t in flaky["timeline"] if t["state"] == "retrying"
        ]
        seen["final"] = {
            role: (j["state"], j.get("error"), j.get("workerId") == worker.nodename)
            for role, j in seen["jobs"].items()
        }
        seen["worker_state"] = worker_snapshot()["state"]
        return seen
    finally:
        for proc in reversed(procs):
            proc.stop(signal.SIGTERM)
        cleanup_broker(broker, queue)


@pytest.mark.parametrize("broker_kind", BROKERS)
def test_agent_and_integration_give_the_same_picture(
    broker_kind, start_server, account, other_account, broker_redis_url, queue
):
    broker = broker_for(broker_kind, broker_redis_url)
    by_agent = run_workload("agent", start_server, account, broker, queue)
    by_integration = run_workload("integration", start_server, other_account, broker, queue)
    assert by_agent["final"] == by_integration["final"]
    assert by_agent["final"]["boom"] == ("failed", "ValueError('kaput')", True)
    assert by_agent["final"]["slow"] == ("completed", None, True)
    assert by_agent["flaky_retry_errors"] == by_integration["flaky_retry_errors"]
    assert by_agent["flaky_retry_errors"] == ["RuntimeError('attempt 1 failed')"]
    # A task prefetched by the worker is queued on it (reserved) in both pictures.
    assert by_agent["reserved"] == by_integration["reserved"] == ("queued", True)
    assert by_agent["worker_state"] == by_integration["worker_state"] == "idle"


def test_the_integrations_worker_keeps_up_with_its_jobs(
    start_server, account, broker_redis_url, queue
):
    """With heartbeats a minute apart, the worker still says at once (within a
    second or two) that it runs a task and that it is idle again: the integration
    sends a heartbeat when its count of active tasks changes."""
    broker = redis_broker_url(broker_redis_url)
    server = start_server()
    env = integration_env(server, account, heartbeat="60")
    worker = CeleryWorker(broker, queue, events=False, env=env, extra_args=("-c", "1"))
    try:
        worker.start()

        def state_of_worker() -> tuple[str, int] | None:
            for w in api(server, account, "/workers"):
                if w["externalId"] == worker.nodename:
                    return w["state"], w["activeJobs"]
            return None

        wait_until(lambda: state_of_worker() is not None, 30, "the worker online")
        publisher(broker, queue).send_task("sluice_test.sleep", (4,), queue=queue)
        wait_until(lambda: state_of_worker() == ("busy", 1), 10, "busy, 1 active, before 60 s")
        wait_until(lambda: state_of_worker() == ("idle", 0), 15, "idle again, before 60 s")
    finally:
        worker.stop(signal.SIGTERM)
        cleanup_broker(broker, queue)
