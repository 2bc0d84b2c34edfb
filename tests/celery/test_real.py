"""Real Celery workers, the real agent and integration, the real Sluice server and stream.

Brokers: the test Redis (another db) always; RabbitMQ at 127.0.0.1:5672 when
one answers (skipped with the reason otherwise). Every wait is a poll with a
deadline on what the stream shows, never a bare sleep.
"""

from __future__ import annotations

import signal

import pytest

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from .rig import (  # noqa: E402
    BROKERS,
    Agent,
    CeleryWorker,
    Collector,
    broker_for,
    cleanup_broker,
    integration_env,
    publisher,
    redis_broker_url,
)


@pytest.fixture
def cleanup(queue):
    brokers: list[str] = []
    procs: list = []
    yield brokers, procs
    for proc in reversed(procs):
        proc.stop(
            signal.SIGKILL if proc.process and proc.process.poll() is None else signal.SIGTERM
        )
    for broker in brokers:
        cleanup_broker(broker, queue)


def send_scenarios(pub, queue: str) -> dict[str, str]:
    """The five task stories of the issue, sent at once."""
    return {
        "ok": pub.send_task("sluice_test.add", (2, 3), queue=queue).id,
        "boom": pub.send_task("sluice_test.boom", ("kaput",), queue=queue).id,
        # Retries with a countdown (Celery's default is 3 minutes): each retry is `scheduled`.
        "flaky": pub.send_task("sluice_test.flaky", (2,), queue=queue).id,
        "eta": pub.send_task("sluice_test.add", (1, 1), queue=queue, countdown=1).id,
        "revoked": pub.send_task("sluice_test.add", (0, 0), queue=queue, countdown=4).id,
    }


def dedupe_consecutive(states: list[str]) -> list[str]:
    out: list[str] = []
    for s in states:
        if not out or out[-1] != s:
            out.append(s)
    return out


def check_lifecycle(col: Collector, pub, queue: str, worker: CeleryWorker, *, strict_order: bool):
    """Drive the scenarios through a running worker and check what the stream shows."""
    ids = send_scenarios(pub, queue)
    col.wait(lambda c: c.has_state(ids["revoked"], "scheduled"), what="revoked task scheduled")
    # revoke is a broadcast (at most once over Redis pub/sub): repeat it until the
    # worker reports the task cancelled (it does so when the ETA comes).
    rev = ids["revoked"]
    for _ in range(20):
        pub.control.revoke(rev)
        try:
            col.wait(lambda c: c.has_state(rev, "cancelled") or c.has_state(rev, "active"), 1)
            break
        except AssertionError:
            continue
    done = {
        "ok": "completed",
        "boom": "failed",
        "flaky": "completed",
        "eta": "completed",
        "revoked": "cancelled",
    }
    col.wait(
        lambda c: all(c.has_state(ids[k], s) for k, s in done.items()),
        timeout=30,
        what="every task to finish",
    )

    def seq(key: str) -> list[str]:
        jobs = col.jobs(ids[key])
        if not strict_order:  # several processes report: order by the event's own time
            rank = {"queued": 0, "scheduled": 0, "active": 1}
            jobs = sorted(
                jobs, key=lambda d: (d["timestamp"], d["attempt"], rank.get(d["state"], 2))
            )
        # A waiting state repeats when a worker receives the task (it then says which).
        return dedupe_consecutive([d["state"] for d in jobs])

    # One job id (derived by the server) across every event of a task.
    for key in ids:
        assert len({d["id"] for d in col.jobs(ids[key])}) == 1, col.jobs(ids[key])
        assert all(d["name"].startswith("sluice_test.") for d in col.jobs(ids[key]))

    assert seq("ok") == ["queued", "active", "completed"]
    ok = next(d for d in col.jobs(ids["ok"]) if d["state"] == "completed")
    assert ok["workerId"] == worker.nodename and ok["attempt"] == 1
    # The queue comes from the publisher's task-sent (agent), which RabbitMQ may deliver
    # after the worker's events: then it is not known yet when the task completes.
    assert ok.get("queue", queue) == queue

    assert seq("boom") == ["queued", "active", "failed"]
    failed = next(d for d in col.jobs(ids["boom"]) if d["state"] == "failed")
    assert "ValueError" in failed["error"] and "kaput" in failed["error"]
    assert "Traceback" in failed["stacktrace"] and len(failed["stacktrace"]) <= 50_000

    flaky = col.jobs(ids["flaky"])
    story = [(d["state"], d["attempt"], d["timestamp"][11:]) for d in flaky]
    retrying = [d for d in flaky if d["state"] == "retrying"]
    assert sorted(d["attempt"] for d in retrying) == [1, 2], story
    assert all(f"attempt {d['attempt']} failed" in d["error"] for d in retrying), story
    assert dedupe_consecutive(seq("flaky")) == [
        "queued", "active", "retrying", "scheduled", "active", "retrying", "scheduled", "active",
        "completed",
    ], story  # fmt: skip
    assert max(d["attempt"] for d in flaky if d["state"] == "completed") == 3

    assert seq("eta") == ["scheduled", "active", "completed"]
    assert seq("revoked") == ["scheduled", "cancelled"]


def check_worker_lifecycle(col: Collector, worker: CeleryWorker) -> None:
    worker.stop()
    col.wait(
        lambda c: any(d["state"] == "offline" for _, d in c.workers(worker.nodename)),
        what="worker offline",
    )
    events = col.workers(worker.nodename)
    changes = [d["state"] for n, d in events if n == "worker:state_change"]
    assert changes[0] == "online" and changes[-1] == "offline", changes
    first_online = next(i for i, (n, _) in enumerate(events) if n == "worker:state_change")
    beats = [d for n, d in events[first_online:] if n == "worker:heartbeat"]
    assert beats, "no heartbeat between online and offline"
    assert all(b["state"] in ("idle", "busy") and "activeJobs" in b for b in beats)
    assert events[-1][1]["state"] == "offline"


@pytest.mark.parametrize("broker_kind", BROKERS)
def test_agent_streams_tasks_and_workers(
    server, account, broker_redis_url, broker_kind, queue, cleanup
):
    broker = broker_for(broker_kind, broker_redis_url)
    brokers, procs = cleanup
    brokers.append(broker)
    col = Collector(server.url, account)
    agent = Agent(broker, server.url, account, "--queue", queue)
    procs.append(agent.start())
    pool = "prefork" if broker_kind == "redis" else "threads"
    worker = CeleryWorker(broker, queue, pool=pool)
    procs.append(worker.start())
    col.wait(lambda c: c.workers(worker.nodename), what="worker online")
    pub = publisher(broker, queue)
    check_lifecycle(col, pub, queue, worker, strict_order=True)
    check_worker_lifecycle(col, worker)
    assert agent.stop() == 0
    col.close()


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_integration_streams_tasks_and_workers(
    server, account, broker_redis_url, pool, queue, cleanup
):
    import sluice.celery

    broker = redis_broker_url(broker_redis_url)
    brokers, procs = cleanup
    brokers.append(broker)
    col = Collector(server.url, account)
    env = integration_env(server, account, connection=True)
    # Task events off in the worker: the integration works from signals alone.
    worker = CeleryWorker(broker, queue, pool=pool, events=False, env=env)
    procs.append(worker.start())
    col.wait(lambda c: c.workers(worker.nodename), what="worker online")
    pub = publisher(broker, queue)
    integration = sluice.celery.install(
        pub, url=server.url, api_key=account.api_key, connection_id=account.connection_id
    )
    try:
        check_lifecycle(col, pub, queue, worker, strict_order=False)
    finally:
        integration.uninstall()
    check_worker_lifecycle(col, worker)
    col.close()


def test_integration_flushes_before_a_prefork_child_exits(
    server, account, broker_redis_url, queue, cleanup
):
    """--max-tasks-per-child 1: every child exits right after its task, and each child's
    events still arrive (its sender starts after the fork and flushes on the way out)."""
    broker = redis_broker_url(broker_redis_url)
    brokers, procs = cleanup
    brokers.append(broker)
    col = Collector(server.url, account)
    env = {
        "TEST_SLUICE_INSTALL": "1",
        "SLUICE_URL": server.url,
        "SLUICE_API_KEY": account.api_key,
        "SLUICE_CONNECTION_ID": account.connection_id,
    }
    worker = CeleryWorker(
        broker, queue, events=False, env=env, extra_args=("--max-tasks-per-child", "1")
    )
    procs.append(worker.start())
    pub = publisher(broker, queue)
    ids = [pub.send_task("sluice_test.add", (i, i), queue=queue).id for i in range(6)]
    col.wait(lambda c: all(c.has_state(t, "completed") for t in ids), what="all six completed")
    pids = {d["extensions"]["pid"] for t in ids for d in col.jobs(t) if d["state"] == "completed"}
    assert len(pids) == 6  # six different children, each gone after its task
    col.close()
