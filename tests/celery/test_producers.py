"""Producers that fit the server: batched per process, within the default ingest
rate limit under a burst, and saying at start-up where they send.

Real parts: `celery worker` subprocesses (prefork) with the integration, the real
Sluice server (gunicorn + gevent) with its default ingest rate limit, real Redis.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
import requests

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from sluice.client.ingest import DEFAULT_BATCH, DEFAULT_LINGER  # noqa: E402
from sluice.config import load_settings  # noqa: E402

from .rig import CeleryWorker, cleanup_broker, publisher, redis_broker_url, wait_until  # noqa: E402

#: What each producer process logs on the way out (see SluiceCelery).
SUMMARY = re.compile(
    r"sluice: (?P<kind>pool process|worker process) (?P<pid>\d+) \w+: (?P<submitted>\d+) events "
    r"submitted, (?P<accepted>\d+) accepted, (?P<duplicates>\d+) duplicates, "
    r"(?P<dropped>\d+) dropped, \d+ rejected, (?P<posts>\d+) posts, "
    r"(?P<limited>\d+) rate-limited \(429\), \d+ failed posts, (?P<pending>\d+) pending"
)


def integration_env(server, account) -> dict[str, str]:
    return {
        "TEST_SLUICE_INSTALL": "1",
        "SLUICE_URL": server.url,
        "SLUICE_API_KEY": account.api_key,
        "SLUICE_CONNECTION_ID": account.connection_id,
    }


def test_the_start_up_line_shows_in_a_worker_at_loglevel_info(
    server, account, broker_redis_url, queue
):
    broker = redis_broker_url(broker_redis_url)
    worker = CeleryWorker(broker, queue, events=False, env=integration_env(server, account))
    try:
        worker.start()  # `-l INFO`, as a user starts it; waits for " ready."
        out = worker.output()
        line = next((x for x in out.splitlines() if "sluice: hooked" in x), None)
        assert line is not None, out[-3000:]
        assert f"sending to {server.url} (connection {account.connection_id})" in line
        assert "in batches of up to 100 events or every 0.2 s" in line
        assert "INFO" in line  # through Celery's logging, at the level asked for
    finally:
        worker.stop()
        cleanup_broker(broker, queue)


def job_counts(server, account) -> dict[str, int]:
    response = requests.get(
        f"{server.url}/api/connections/{account.connection_id}/jobs",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {account.api_key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]


def late_queued(server, account) -> list[dict] | None:
    """The jobs the index shows `queued` although their timeline holds a `completed`
    stamped after that `queued`: the publisher's `queued` arrived after the worker's
    `completed` (another process, its own batch), and the index keeps the state that
    arrived last. None while some job is really not completed."""
    headers = {"Authorization": f"Bearer {account.api_key}"}
    base = f"{server.url}/api/connections/{account.connection_id}/jobs"
    page = requests.get(base, params={"state": "queued", "limit": 200}, headers=headers, timeout=10)
    late = []
    for job in page.json()["data"]:
        detail = requests.get(f"{base}/{job['id']}", headers=headers, timeout=10).json()["data"]
        timeline = detail["timeline"]
        done = [e["timestamp"] for e in timeline if e["state"] == "completed"]
        if not done or timeline[-1]["timestamp"] > max(done):
            return None
        late.append({"externalId": job["externalId"], "timeline": timeline})
    return late


def test_a_burst_of_2000_tasks_on_4_prefork_processes_meets_no_429(
    start_server, account, broker_redis_url, queue
):
    """The default SLUICE_INGEST_RATE_LIMIT, every producer batching: no producer
    (worker main process, its 4 pool processes, the publisher) is ever answered 429,
    and every task's final state is in the job index."""
    default_limit = load_settings({}).ingest_rate_limit
    limited = start_server(SLUICE_INGEST_RATE_LIMIT=default_limit)
    broker = redis_broker_url(broker_redis_url)
    worker = CeleryWorker(
        broker, queue, events=False, env=integration_env(limited, account), extra_args=("-c", "4")
    )
    pub = publisher(broker, queue)
    import sluice.celery

    integration = sluice.celery.install(
        pub, url=limited.url, api_key=account.api_key, connection_id=account.connection_id
    )
    tasks = 2000
    try:
        worker.start()
        started = time.monotonic()
        with pub.producer_or_acquire() as producer:
            for i in range(tasks):
                pub.send_task("sluice_test.add", (i, i), queue=queue, producer=producer)
        assert integration is not None and integration.sender.flush(30)

        counts: dict[str, int] = {}

        def all_finished() -> bool:
            counts.update(job_counts(limited, account))
            return counts["total"] == tasks and counts["completed"] == tasks

        try:
            wait_until(all_finished, 60, f"{tasks} completed jobs in the job index")
        except AssertionError as exc:
            # A publisher's `queued` (stamped earlier) that arrived after the worker's
            # `completed` must not have taken the job back: the index keeps the
            # latest event by time (docs/api.md).
            late = late_queued(limited, account)
            raise AssertionError(f"{exc}: {counts}; late queued: {(late or [])[:2]}") from None
        assert worker.stop() == 0
        lifetime = time.monotonic() - started
    finally:
        worker.stop(signal.SIGKILL)
        if integration is not None:
            integration.uninstall()
        cleanup_broker(broker, queue)

    publisher_stats = integration.sender.stats
    assert publisher_stats.rate_limited == 0, integration.sender.summary()
    # The worker's `queued` (task_received) shares the publisher's event id: one of them
    # is a duplicate. Delivered either way, nothing dropped.
    assert publisher_stats.accepted + publisher_stats.duplicates == tasks
    assert publisher_stats.dropped == 0 and integration.sender.pending() == 0
    # Batches, not a request per event: 2,000 events in at most a few dozen posts.
    assert publisher_stats.posts <= 2 * tasks / DEFAULT_BATCH + lifetime / DEFAULT_LINGER + 5

    out = worker.output()
    summaries = [m.groupdict() for m in SUMMARY.finditer(out)]
    kinds = sorted(s["kind"] for s in summaries)
    assert kinds == ["pool process"] * 4 + ["worker process"], (kinds, out[-3000:])
    for s in summaries:
        assert int(s["limited"]) == 0, s
        assert int(s["dropped"]) == 0 and int(s["pending"]) == 0, s
        assert int(s["accepted"]) + int(s["duplicates"]) == int(s["submitted"]), s
        # Each process posted batches: no more than one per linger plus two per full batch.
        bound = lifetime / DEFAULT_LINGER + 2 * int(s["submitted"]) / DEFAULT_BATCH + 5
        assert int(s["posts"]) <= bound, (s, bound)
    # Every task was started and finished in a pool process: 2 events each.
    assert sum(int(s["submitted"]) for s in summaries if s["kind"] == "pool process") == 2 * tasks
