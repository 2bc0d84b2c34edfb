"""Job metrics on a real 2-worker gunicorn, scraped by a real Prometheus.

A known mix of job transitions, posted over many requests (both workers take
some), gives exact `sluice_jobs_total` counts per label set and exact runtime
and wait bucket counts; a batch resent is not counted again, a rejected one
not at all. Queue and worker gauges come from the latest snapshots in Redis
at each scrape: a worker that goes offline drops the count and leaves no
series. A flood of task names stays within the cap, the totals exact. The
pure parts (caps, runtime, wait, gauges) are in tests/unit/test_jobmetrics.py.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from sluice.timefmt import iso_from_ms
from tests.prometheus import PROMTOOL, TOKEN, Prometheus, needs_prometheus, scrape
from tests.util import ingest, job_event, queue_event, wait_until, worker_event

T0 = "2026-11-30T10:00:00.000Z"


def at(seconds: float) -> str:
    """T0 + seconds, in the wire format."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2026-11-30T{10 + hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}Z"


def job(cid: str, external_id: str, state: str, **fields) -> dict:
    return job_event(cid, external_id, state, event_id=str(uuid.uuid4()), **fields)


def transitions(cid: str) -> list[dict]:
    """The known mix: every event of it is accepted once."""
    send, report = (
        {"queue": "emails", "name": "app.send"},
        {"queue": "reports", "name": "app.report"},
    )
    return [
        # A: waits 2 s, runs 0.3 s.
        job(cid, "a", "queued", createdAt=at(0), **send),
        job(cid, "a", "active", createdAt=at(0), startedAt=at(2), **send),
        job(cid, "a", "completed", startedAt=at(2), finishedAt=at(2.3), **send),
        # B: waits 40 s, runs 100 s, fails.
        job(cid, "b", "queued", createdAt=at(0), **send),
        job(cid, "b", "active", createdAt=at(0), startedAt=at(40), **send),
        job(cid, "b", "failed", startedAt=at(40), finishedAt=at(140), error="boom", **send),
        # C: only queued.
        job(cid, "c", "queued", createdAt=at(0), **send),
        # D: waits 5 ms, cancelled after 3000 s.
        job(cid, "d", "queued", createdAt=at(0), **report),
        job(cid, "d", "active", createdAt=at(0), startedAt=at(0.005), **report),
        job(cid, "d", "cancelled", startedAt=at(0.005), finishedAt=at(3000.005), **report),
        # E: a retry (attempt 2: no wait observed), its runtime only in extensions.
        job(cid, "e", "active", createdAt=at(0), startedAt=at(500), attempt=2, **report),
        job(cid, "e", "completed", attempt=2, extensions={"runtime": 7.0}, **report),
        # F: scheduled, then active (no wait observed), completed without its start
        # (no runtime observed).
        job(cid, "f", "scheduled", createdAt=at(0), **report),
        job(
            cid,
            "f",
            "active",
            previousState="scheduled",
            createdAt=at(0),
            startedAt=at(60),
            **report,
        ),
        job(cid, "f", "completed", finishedAt=at(61), **report),
    ]


EXPECTED_COUNTS = {
    ("emails", "app.send", "queued"): 3,
    ("emails", "app.send", "active"): 2,
    ("emails", "app.send", "completed"): 1,
    ("emails", "app.send", "failed"): 1,
    ("reports", "app.report", "queued"): 1,
    ("reports", "app.report", "scheduled"): 1,
    ("reports", "app.report", "active"): 3,
    ("reports", "app.report", "cancelled"): 1,
    ("reports", "app.report", "completed"): 2,
}
BUCKETS = ("0.01", "0.5", "1.0", "10.0", "60.0", "120.0", "3600.0", "+Inf")
#: Cumulative bucket counts (le -> count) of all of the connection's jobs.
EXPECTED_RUNTIME = {  # 0.3, 100, 3000, 7
    "0.01": 0,
    "0.5": 1,
    "1.0": 1,
    "10.0": 2,
    "60.0": 2,
    "120.0": 3,
    "3600.0": 4,
    "+Inf": 4,
}
EXPECTED_WAIT = {  # 2, 40, 0.005
    "0.01": 1,
    "0.5": 1,
    "1.0": 1,
    "10.0": 2,
    "60.0": 3,
    "120.0": 3,
    "3600.0": 3,
    "+Inf": 3,
}


def samples(text: str, name: str, connection: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("connection") == connection:
                out.append((sample.labels, sample.value))
    return out


def counted_by_worker(metrics_dir: Path, connection: str) -> dict[str, float]:
    """`sluice_jobs_total` of the connection per worker file."""
    out = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)]):
            for s in metric.samples:
                if s.name == "sluice_jobs_total" and s.labels.get("connection") == connection:
                    total += s.value
        if total:
            out[path.name] = total
    return out


@needs_prometheus
def test_job_metrics_exact_over_two_workers_and_gauges_from_snapshots(
    start_server, account, tmp_path
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = start_server(
        WEB_CONCURRENCY="2", SLUICE_METRICS_TOKEN=TOKEN, SLUICE_METRICS_DIR=str(metrics_dir)
    )
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}", TOKEN)
    try:
        cid, key = account.connection_id, account.api_key
        events = transitions(cid)
        # One or two events per request, each on a new TCP connection: both
        # workers take some (the kernel picks).
        batches = [events[i : i + 2] for i in range(0, len(events), 2)]
        for batch in batches:
            reply = ingest(server.url, key, cid, batch)
            assert reply.json() == {"accepted": len(batch), "duplicates": 0}, reply.text
        # Resent: duplicates, not counted again; a rejected batch: nothing.
        assert ingest(server.url, key, cid, batches[0]).json() == {
            "accepted": 0,
            "duplicates": 2,
        }
        mixed = [batches[1][0], job(cid, "g", "queued", queue="emails", name="app.send")]
        assert ingest(server.url, key, cid, mixed).json() == {"accepted": 1, "duplicates": 1}
        bad = [job(cid, "h", "queued", queue="emails", name="app.send")]
        bad[0]["job"]["state"] = "exploded"
        assert ingest(server.url, key, cid, bad).status_code == 400
        counts = {**EXPECTED_COUNTS, ("emails", "app.send", "queued"): 4}
        # Until both workers have counted some: concurrent requests of one job each.
        filled = 0
        with ThreadPoolExecutor(8) as pool:
            while len(counted_by_worker(metrics_dir, cid)) < 2:
                assert filled < 400, "every request went to one worker"
                fill = [[job(cid, f"fill-{filled + i}", "queued", queue="fill")] for i in range(8)]
                replies = pool.map(lambda b: ingest(server.url, key, cid, b).status_code, fill)
                assert list(replies) == [202] * 8
                filled += 8
        if filled:
            counts[("fill", "app.tasks.send_email", "queued")] = filled

        # Gauges: two workers, one queue snapshot replaced by a later one.
        for event in (
            worker_event(cid, "celery@w1", "online", concurrency=4),
            worker_event(cid, "celery@w2", "busy", activeJobs=1),
            queue_event(cid, "emails", 9, consumers=2),
            queue_event(cid, "emails", 5, consumers=2),
            queue_event(cid, "reports", 0),
        ):
            assert ingest(server.url, key, cid, [event]).status_code == 202

        on = f'connection="{cid}"'
        expected = {
            f"sum(sluice_jobs_total{{{on}}})": float(sum(counts.values())),
            f"max(sluice_workers_online{{{on}}})": 2.0,
            f'max(sluice_queue_depth{{{on},queue="emails"}})': 5.0,
            f'max(sluice_queue_consumers{{{on},queue="emails"}})': 2.0,
            f'max(sluice_queue_depth{{{on},queue="reports"}})': 0.0,
            f'count(sluice_queue_consumers{{{on},queue="reports"}})': None,  # null: not known
            f"count(sluice_queue_oldest_age_seconds{{{on}}})": None,  # no producer says
        }
        for (queue, name, state), n in counts.items():
            where = f'{on},queue="{queue}",name="{name}",state="{state}"'
            expected[f"sum(sluice_jobs_total{{{where}}})"] = float(n)
        for le in BUCKETS:
            expected[f'sum(sluice_job_runtime_seconds_bucket{{{on},le="{le}"}})'] = float(
                EXPECTED_RUNTIME[le]
            )
            expected[f'sum(sluice_job_wait_seconds_bucket{{{on},le="{le}"}})'] = float(
                EXPECTED_WAIT[le]
            )
        prometheus.wait_for(expected)
        # The sums (float additions, in whichever order the workers made them).
        assert prometheus.query(f"sum(sluice_job_runtime_seconds_sum{{{on}}})") == pytest.approx(
            0.3 + 100 + 3000 + 7
        )
        assert prometheus.query(f"sum(sluice_job_wait_seconds_sum{{{on}}})") == pytest.approx(
            2 + 40 + 0.005
        )
        # Exactly these label sets, nothing else (no `other`: under the caps).
        series = prometheus.vector(f"sum by (queue, name, state) (sluice_jobs_total{{{on}}})")
        assert {
            (dict(labels)["queue"], dict(labels)["name"], dict(labels)["state"]): v
            for labels, v in series.items()
        } == {k: float(v) for k, v in counts.items()}
        # Per queue and task name: the runtime of app.send alone (0.3 and 100 s).
        assert (
            prometheus.query(
                f'sum(sluice_job_runtime_seconds_count{{{on},queue="emails",name="app.send"}})'
            )
            == 2.0
        )
        # The scraped text passes promtool's checks.
        body = scrape(server.url)
        assert body.status_code == 200
        check = subprocess.run(
            [str(PROMTOOL), "check", "metrics"], input=body.content, capture_output=True, timeout=30
        )
        assert check.returncode == 0, (check.stdout + check.stderr).decode()

        # A worker goes offline: the count drops on the next scrape; no series of
        # its own exists, before or after.
        assert "celery@w2" not in body.text
        offline = worker_event(cid, "celery@w2", "offline", kind="worker_state_change")
        assert ingest(server.url, key, cid, [offline]).status_code == 202
        after = scrape(server.url).text
        assert samples(after, "sluice_workers_online", cid) == [({"connection": cid}, 1.0)]
        assert "celery@w2" not in after
        prometheus.wait_for({f"max(sluice_workers_online{{{on}}})": 1.0})
        # The gauges are read from Redis: any worker answers the same.
        for _ in range(4):
            text = scrape(server.url).text
            assert samples(text, "sluice_workers_online", cid) == [({"connection": cid}, 1.0)]
            assert samples(text, "sluice_queue_depth", cid) == [
                ({"connection": cid, "queue": "emails"}, 5.0),
                ({"connection": cid, "queue": "reports"}, 0.0),
            ]
    finally:
        prometheus.stop()
        server.stop()


def test_a_flood_of_task_names_stays_under_the_cap_with_exact_totals(start_server, account):
    server = start_server(WEB_CONCURRENCY="2", SLUICE_METRICS_MAX_LABELS="50")
    try:
        cid, key = account.connection_id, account.api_key
        names = [f"app.tasks.generated_{i}" for i in range(200)]
        for first in range(0, 200, 10):  # 20 requests: both workers ask Redis
            batch = [
                job(cid, f"job-{i}", "queued", name=names[i], queue=f"q{i % 60}")
                for i in range(first, first + 10)
            ]
            assert ingest(server.url, key, cid, batch).json() == {"accepted": 10, "duplicates": 0}
        text = scrape(server.url, token=None).text
        rows = samples(text, "sluice_jobs_total", cid)
        assert sum(value for _, value in rows) == 200
        seen_names = {labels["name"] for labels, _ in rows}
        seen_queues = {labels["queue"] for labels, _ in rows}
        assert "other" in seen_names and "other" in seen_queues
        assert len(seen_names - {"other"}) == 50
        assert len(seen_queues - {"other"}) == 50
        assert seen_names - {"other"} <= set(names)
        # Admitted for good: the same names on every worker, each counted once.
        for labels, value in rows:
            if labels["name"] != "other":
                assert value == 1
        assert sum(v for labels, v in rows if labels["name"] == "other") == 150

        # More of the admitted names and of new ones: still within the cap.
        admitted = sorted(seen_names - {"other"})
        again = [job(cid, f"more-{i}", "completed", name=admitted[i]) for i in range(5)]
        again += [job(cid, f"new-{i}", "completed", name=f"app.new_{i}") for i in range(5)]
        assert ingest(server.url, key, cid, again).json() == {"accepted": 10, "duplicates": 0}

        def completed() -> dict[str, float]:
            return {
                labels["name"]: value
                for labels, value in samples(
                    scrape(server.url, token=None).text, "sluice_jobs_total", cid
                )
                if labels["state"] == "completed"
            }

        wait_until(lambda: sum(completed().values()) == 10, what="the 10 completions counted")
        assert completed() == {**{name: 1.0 for name in admitted[:5]}, "other": 5.0}
    finally:
        server.stop()


def test_gauges_of_a_connection_without_workers_and_redis_reads_bounded(
    start_server, account, other_account
):
    """A connection that sends only job events has no workers_online series (not
    a 0 that would read "every worker down"); its queue gauges come and go with
    its snapshots; another connection's snapshots are its own."""
    server = start_server(SLUICE_METRICS_TOKEN=TOKEN)
    try:
        cid, key = account.connection_id, account.api_key
        assert ingest(server.url, key, cid, [job(cid, "x", "queued", queue="q")]).status_code == 202
        other = other_account.connection_id
        assert (
            ingest(
                server.url,
                other_account.api_key,
                other,
                [worker_event(other, "celery@o1", "idle"), queue_event(other, "q", 3)],
            ).status_code
            == 202
        )
        text = scrape(server.url).text
        assert samples(text, "sluice_workers_online", cid) == []
        assert samples(text, "sluice_queue_depth", cid) == []
        assert samples(text, "sluice_workers_online", other) == [({"connection": other}, 1.0)]
        assert samples(text, "sluice_queue_depth", other) == [
            ({"connection": other, "queue": "q"}, 3.0)
        ]
        # Deleted: its gauges go (its snapshots and its place in the registry).
        session = other_account.login(server.url)
        deleted = session.delete(f"{server.url}/api/connections/{other}", timeout=10)
        assert deleted.status_code in (200, 204), deleted.text
        wait_until(
            lambda: not samples(scrape(server.url).text, "sluice_queue_depth", other),
            what="the deleted connection's gauges to go",
        )
        assert requests.get(server.url + "/api/health", timeout=5).status_code == 200
    finally:
        server.stop()


def test_workers_online_leaves_out_a_worker_whose_heartbeats_stopped(start_server, account):
    """`sluice_workers_online` follows the workers API's rule: a worker whose last
    event is older than SLUICE_WORKER_EXPIRY_SECONDS is not online, without any
    goodbye; a new heartbeat counts it again."""
    server = start_server(SLUICE_METRICS_TOKEN=TOKEN, SLUICE_WORKER_EXPIRY_SECONDS="30")
    try:
        cid, key = account.connection_id, account.api_key
        old = iso_from_ms(int(time.time() * 1000) - 120_000)
        events = [
            worker_event(cid, "w1@h", "busy", activeJobs=1),
            worker_event(cid, "w2@h", "busy", activeJobs=1),
            worker_event(cid, "w3@h", "idle"),
        ]
        events[1]["timestamp"] = old  # silent for two minutes: SIGKILLed, say
        assert ingest(server.url, key, cid, events).status_code == 202
        on = [({"connection": cid}, 2.0)]
        assert samples(scrape(server.url).text, "sluice_workers_online", cid) == on
        again = [worker_event(cid, "w2@h", "busy", activeJobs=1)]
        assert ingest(server.url, key, cid, again).status_code == 202
        on = [({"connection": cid}, 3.0)]
        assert samples(scrape(server.url).text, "sluice_workers_online", cid) == on
    finally:
        server.stop()
