"""Worker detail (issue 13 item 7) with a real worker (`-c 2 -Q a,b`), prefork
through each producer (threads too through the integration): the agent
(Celery's heartbeat events + `inspect()`) and the in-worker integration (the
worker's own objects). The workers API answers
the latest snapshot: pool and size, consumed queues, registered tasks, the
processed count growing, and active and reserved (prefetched) tasks. Every wait
is a poll with a deadline on what the API says."""

from __future__ import annotations

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from .rig import (  # noqa: E402
    Agent,
    CeleryWorker,
    cleanup_broker,
    integration_env,
    publisher,
    redis_broker_url,
    wait_until,
)

#: The tasks of tests/celery/celeryapp.py.
APP_TASKS = {"sluice_test.add", "sluice_test.boom", "sluice_test.flaky", "sluice_test.sleep"}


def worker_of(server, account, nodename: str) -> dict | None:
    reply = requests.get(
        f"{server.url}/api/connections/{account.connection_id}/workers",
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return {w["externalId"]: w for w in reply.json()["data"]}.get(nodename)


@pytest.mark.parametrize(
    "producer, pool",
    [("agent", "prefork"), ("integration", "prefork"), ("integration", "threads")],
)
def test_a_worker_shows_pool_size_queues_registered_processed_and_reserved(
    server, account, broker_redis_url, queue, producer, pool
):
    broker = redis_broker_url(broker_redis_url)
    qa, qb = f"{queue}-a", f"{queue}-b"
    env = {}
    if producer == "integration":
        env = integration_env(server, account)
    worker = CeleryWorker(broker, f"{qa},{qb}", pool=pool, env=env)
    agent = (
        Agent(broker, server.url, account, with_connection=False) if producer == "agent" else None
    )
    app = publisher(broker, qa)
    try:
        if agent is not None:
            agent.start()
        worker.start()
        for q in (qa, qb):
            app.send_task("sluice_test.add", (1, 2), queue=q)
        node = worker.nodename

        def described():
            w = worker_of(server, account, node)
            ready = (
                w is not None
                and w.get("pool") == pool
                and w.get("concurrency") == 2
                and set(w.get("queues") or ()) == {qa, qb}
                and APP_TASKS <= set(w.get("registered") or ())
                and (w.get("processed") or 0) >= 2
            )
            return w if ready else None

        w = wait_until(described, 40, f"{node} described by the {producer}")
        assert w["state"] in ("idle", "busy", "online") and w["expired"] is False
        assert not any(name.startswith("celery.") for name in w["registered"])
        first = w["processed"]

        # Four slow tasks on two processes: two run, two wait prefetched on the worker.
        for _ in range(4):
            app.send_task("sluice_test.sleep", (4.0,), queue=qb)

        def holding():
            w = worker_of(server, account, node)
            return w if w and w["activeJobs"] == 2 and w.get("reservedJobs") == 2 else None

        w = wait_until(holding, 20, "2 active and 2 reserved")
        assert w["state"] == "busy"

        def processed_grew():
            w = worker_of(server, account, node)
            done = w and w["activeJobs"] == 0 and w.get("reservedJobs") == 0
            return w if done and w.get("processed", 0) >= first + 4 else None

        w = wait_until(processed_grew, 30, "the four slow tasks processed")
        assert w["state"] == "idle"
    finally:
        worker.stop()
        if agent is not None:
            agent.stop()
        cleanup_broker(broker, qa)
        cleanup_broker(broker, qb)
