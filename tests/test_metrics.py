"""`GET /metrics` scraped by a real Prometheus from a real 2-worker gunicorn.

Debian's `prometheus` (and its `promtool`) are started on free ports
(tests/prometheus.py); without them these tests are skipped, saying why. The counts Prometheus
stores must be exact over both workers, and stay exact after one worker is
SIGKILLed and respawned (its counters stay counted, its open streams stop
counting). The access rules at the Flask level are in tests/unit/test_metrics.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from tests.prometheus import PROMTOOL, TOKEN, Prometheus, needs_prometheus, scrape
from tests.sse import open_stream
from tests.util import ingest, job_event, jobs, wait_until


def worker_value(metrics_dir: Path, filename: str, sample: str, **labels: str) -> float:
    """One sample's value in one worker's multiprocess file (0 when absent)."""
    path = metrics_dir / filename
    if not path.exists():
        return 0.0
    for metric in MultiProcessCollector.merge([str(path)]):
        for s in metric.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def streams_on(metrics_dir: Path, pid: int) -> float:
    return worker_value(metrics_dir, f"gauge_livesum_{pid}.db", "sluice_streams_open")


def accepted_by(metrics_dir: Path, pid: int) -> float:
    return worker_value(
        metrics_dir, f"counter_{pid}.db", "sluice_ingest_events_total", result="accepted"
    )


@needs_prometheus
def test_prometheus_counts_exactly_over_two_workers_and_a_killed_one(
    start_server, account, tmp_path
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Left from an earlier run: the master removes the values, nothing else.
    (metrics_dir / "counter_1.db").write_bytes(b"not a metrics file")
    (metrics_dir / "notes.txt").write_text("kept")
    server = start_server(
        WEB_CONCURRENCY="2",
        SLUICE_METRICS_TOKEN=TOKEN,
        SLUICE_METRICS_DIR=str(metrics_dir),
    )
    assert not (metrics_dir / "counter_1.db").exists()
    assert (metrics_dir / "notes.txt").read_text() == "kept"
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}", TOKEN)
    streams = []
    try:
        cid, key = account.connection_id, account.api_key
        workers = wait_until(lambda: len(p := server.worker_pids()) == 2 and p, what="2 workers")
        # Both have loaded the app (its metrics made their files): both accept.
        wait_until(
            lambda: all((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in workers),
            timeout=30,
            what="both workers to load the app",
        )

        # Streams until each worker holds at least one (the kernel picks the worker).
        while not all(streams_on(metrics_dir, pid) >= 1 for pid in workers):
            assert len(streams) < 200, "every stream went to one worker"
            stream = open_stream(server.url, cid, api_key=key)
            assert stream.status == 200
            stream.read_bytes(1)
            streams.append(stream)
        refused = open_stream(server.url, cid, api_key="sk_live_" + "0" * 43)
        assert refused.status == 401
        refused.close()

        batches = [jobs(cid, 5) for _ in range(20)]
        for batch in batches:  # each on a new connection: both workers take some
            assert ingest(server.url, key, cid, batch).json() == {"accepted": 5, "duplicates": 0}
        for stream in streams:
            assert len(stream.data_events(100, timeout=20)) == 100
        again = ingest(server.url, key, cid, batches[0])
        assert again.json() == {"accepted": 0, "duplicates": 5}
        bad = jobs(cid, 3)
        bad[1]["job"]["state"] = "exploded"
        assert ingest(server.url, key, cid, bad).status_code == 400

        n = len(streams)
        prometheus.wait_for(
            {
                'sum(sluice_ingest_events_total{result="accepted"})': 100,
                'sum(sluice_ingest_events_total{result="duplicate"})': 5,
                'sum(sluice_ingest_events_total{result="rejected"})': 3,
                'sum(sluice_ingest_requests_total{status="202"})': 21,
                'sum(sluice_ingest_requests_total{status="400"})': 1,
                "sum(sluice_ingest_seconds_count)": 22,
                "sum(sluice_streams_open)": n,
                'sum(sluice_stream_opens_total{result="ok"})': n,
                'sum(sluice_stream_opens_total{result="unauthorized"})': 1,
                "sum(sluice_events_delivered_total)": n * 100,
                "sum(sluice_processes)": 2,
                "count(process_resident_memory_bytes)": 2,
                "sum(sluice_redis_errors_total)": 0,
                "sum(sluice_stream_cutoffs_total)": 0,
            }
        )
        assert prometheus.query("sum(sluice_fanout_lag_seconds_count)") >= 1
        assert prometheus.query("sum(sluice_hub_reads_total)") >= 1
        # Every entry reached its clients well within the slowest bucket.
        assert prometheus.query(
            'sum(sluice_fanout_lag_seconds_bucket{le="10.0"}) - sum(sluice_fanout_lag_seconds_count)'
        ) == pytest.approx(0)

        # The text passes promtool's checks (names, types, suffixes).
        body = scrape(server.url)
        assert body.status_code == 200
        assert body.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        check = subprocess.run(
            [str(PROMTOOL), "check", "metrics"], input=body.content, capture_output=True, timeout=30
        )
        assert check.returncode == 0, (check.stdout + check.stderr).decode()

        # SIGKILL a worker that counted accepted events and holds streams.
        victim = next(pid for pid in workers if accepted_by(metrics_dir, pid) > 0)
        victim_streams = streams_on(metrics_dir, victim)
        assert victim_streams >= 1
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in (p := server.worker_pids()) and len(p) == 2,
            timeout=30,
            what="gunicorn to respawn the killed worker",
        )
        # child_exit ran: its live gauges are gone, its counters stay.
        wait_until(lambda: not (metrics_dir / f"gauge_livesum_{victim}.db").exists())
        assert (metrics_dir / f"counter_{victim}.db").exists()

        for _ in range(5):
            assert ingest(server.url, key, cid, jobs(cid, 5)).status_code == 202
        prometheus.wait_for(
            {
                'sum(sluice_ingest_events_total{result="accepted"})': 125,
                'sum(sluice_ingest_events_total{result="duplicate"})': 5,
                'sum(sluice_ingest_requests_total{status="202"})': 26,
                "sum(sluice_streams_open)": n - victim_streams,
                "sum(sluice_processes)": 2,
                f'count(process_resident_memory_bytes{{pid="{victim}"}})': None,
                "count(process_resident_memory_bytes)": 2,
            }
        )
        # Never lower than before on the way: no counter reset was seen.
        assert prometheus.query('resets(sluice_ingest_events_total{result="accepted"}[5m])') == 0
    finally:
        for stream in streams:
            stream.close()
        prometheus.stop()
        server.stop()


def test_metrics_access_on_a_real_server(start_server, account):
    """With a token: only `Bearer <token>`, every refusal a plain 404."""
    server = start_server(SLUICE_METRICS_TOKEN=TOKEN)
    try:
        unknown = requests.get(server.url + "/no-such-path", timeout=5)
        for response in (
            scrape(server.url, token=None),
            scrape(server.url, token="wrong"),
            scrape(server.url, token=TOKEN + "x"),
            requests.get(server.url + "/metrics", headers={"Authorization": TOKEN}, timeout=5),
        ):
            assert response.status_code == 404
            assert response.content == unknown.content  # says nothing of /metrics
        ok = scrape(server.url)
        assert ok.status_code == 200
        assert b"sluice_streams_open" in ok.content
        # Not an ingest, not a stream: scraping counts as neither.
        assert b'sluice_ingest_requests_total{status="200"}' not in ok.content
    finally:
        server.stop()


def test_events_posted_one_by_one_are_counted_once(start_server, account):
    """The same event id posted twice is a duplicate the second time, on any worker."""
    server = start_server(WEB_CONCURRENCY="2")
    try:
        cid, key = account.connection_id, account.api_key
        event_id = str(uuid.uuid4())
        for _ in range(4):
            event = job_event(cid, "job-1", "queued", event_id=event_id)
            assert ingest(server.url, key, cid, [event]).status_code == 202

        def counted() -> dict[str, float]:
            out = {}
            for line in scrape(server.url, token=None).text.splitlines():
                if line.startswith("sluice_ingest_events_total{"):
                    name, value = line.rsplit(" ", 1)
                    out[name.split('"')[1]] = float(value)
            return out

        assert counted() == {"accepted": 1.0, "duplicate": 3.0, "rejected": 0.0}
    finally:
        server.stop()
