"""Worker liveness with real Celery workers and the in-worker integration: two
workers on one host are two workers, and a SIGKILLed one (no goodbye: the
integration dies with it) is offline once its heartbeats are older than
SLUICE_WORKER_EXPIRY_SECONDS, as the server decides on read. Every wait is a
poll with a deadline, never a bare sleep."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from .rig import (  # noqa: E402
    CeleryWorker,
    cleanup_broker,
    integration_env,
    redis_broker_url,
    wait_until,
)

EXPIRY = 3.0


def children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (the prefork pool), from /proc."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                found.append(int(status.parent.name))
    return found


def workers(server, account) -> dict[str, dict]:
    reply = requests.get(
        f"{server.url}/api/connections/{account.connection_id}/workers",
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return {w["externalId"]: w for w in reply.json()["data"]}


def test_integration_two_workers_told_apart_and_a_sigkilled_one_expires(
    start_server, account, broker_redis_url, queue
):
    server = start_server(SLUICE_WORKER_EXPIRY_SECONDS=str(EXPIRY))
    broker = redis_broker_url(broker_redis_url)
    env = integration_env(server, account, connection=True)
    first = CeleryWorker(broker, queue, env=env)
    second = CeleryWorker(broker, queue, env=env)
    orphans: list[int] = []
    try:
        first.start()
        second.start()
        host = socket.gethostname()
        names = {first.nodename, second.nodename}
        assert len(names) == 2 and all(n.endswith(f"@{host}") for n in names)

        def both_online():
            seen = workers(server, account)
            return all(n in seen and seen[n]["state"] != "offline" for n in names) and seen

        seen = wait_until(both_online, 30, "both workers online in the API")
        # Two workers on one host: two entries, named by their full name, one host.
        assert {seen[n]["hostname"] for n in names} == {host}
        assert len({seen[n]["id"] for n in names}) == 2

        # SIGKILL the first (its pool children are orphans; killed below): no goodbye.
        assert first.process is not None
        orphans = children(first.process.pid)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        killed_at = time.monotonic()

        def first_expired():
            seen = workers(server, account)
            return seen[first.nodename]["expired"] and seen

        seen = wait_until(first_expired, EXPIRY + 10, "the killed worker to expire")
        gone = seen[first.nodename]
        assert gone["state"] == "offline"
        assert gone["offlineReason"] == "heartbeat_expired"
        assert gone["reportedState"] in ("online", "busy", "idle")  # it never said goodbye
        assert time.monotonic() - killed_at < EXPIRY + 10
        # The other worker, still beating, stays online.
        other = seen[second.nodename]
        assert (other["expired"], other["state"] != "offline") == (False, True)
    finally:
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.stop(signal.SIGKILL)
        second.stop()
        cleanup_broker(broker, queue)


@pytest.mark.parametrize("producer", ["integration", "agent"])
def test_jobs_of_a_sigkilled_worker_are_lost(
    producer, start_server, account, broker_redis_url, queue
):
    """Two tasks running and one received (prefetched) on a prefork worker that
    is SIGKILLed: once its heartbeats expire, the job API says all three are
    lost; nothing reads as a live Active. The same with the agent watching
    Celery's events as with the integration inside the worker."""
    from .rig import Agent, publisher

    server = start_server(SLUICE_WORKER_EXPIRY_SECONDS=str(EXPIRY))
    broker = redis_broker_url(broker_redis_url)
    agent = None
    if producer == "agent":
        # Celery's own heartbeats, 1 s apart (rig.CeleryWorker), under the 3 s expiry.
        worker = CeleryWorker(broker, queue)
        agent = Agent(broker, server.url, account, "--queue", queue).start()
    else:
        env = integration_env(server, account, connection=True)
        worker = CeleryWorker(broker, queue, env=env, events=False)
    orphans: list[int] = []
    headers = {"Authorization": f"Bearer {account.api_key}"}

    def jobs() -> list[dict]:
        reply = requests.get(
            f"{server.url}/api/connections/{account.connection_id}/jobs",
            headers=headers,
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    try:
        worker.start()
        pub = publisher(broker, queue)
        ids = {pub.send_task("sluice_test.sleep", (60,), queue=queue).id for _ in range(4)}

        def running_and_reserved():
            mine = [j for j in jobs() if j["externalId"] in ids]
            active = [j for j in mine if j["state"] == "active"]
            held = [j for j in mine if j["state"] == "queued" and j.get("workerId")]
            return len(active) == 2 and len(held) >= 1 and (active, held)

        try:
            active, held = wait_until(running_and_reserved, 60, "2 active and 1 reserved job")
        except AssertionError as exc:
            seen = [(j["externalId"][:8], j["state"], j.get("workerId")) for j in jobs()]
            raise AssertionError(f"{exc}: {seen}\n{worker.output()[-2000:]}") from None
        assert {j["workerId"] for j in active + held} == {worker.nodename}
        assert not any(j.get("lost") for j in active + held)

        assert worker.process is not None
        orphans = children(worker.process.pid)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)
        held_ids = {j["externalId"] for j in active + held}

        def all_lost():
            mine = {j["externalId"]: j for j in jobs()}
            return all(mine[i].get("lost") is True for i in held_ids) and mine

        mine = wait_until(all_lost, EXPIRY + 10, "the killed worker's jobs to be lost")
        # Nothing is a live Active: every active job of this worker is lost.
        assert all(j.get("lost") for j in mine.values() if j["state"] == "active")
    finally:
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.stop(signal.SIGKILL)
        if agent is not None:
            agent.stop()
        cleanup_broker(broker, queue)
