"""Every metric the service exports, in one place: name, type, labels, meaning.

The fan-out (`sluice.fanout`) and the web layer (`sluice.web`) import the
objects below and only increment or observe them; nothing else in Sluice
imports `prometheus_client`, and the I/O-free core (contract, schema, config,
job index, store) knows nothing of metrics. On hot paths counts are batched:
one `inc(n)` per read round or per request, never one call per event and
client. Labelled series used on hot paths are bound once, here.

Under gunicorn the counts of every worker process are merged, with
`prometheus_client`'s multiprocess mode: `sluice.gunicorn_conf.on_starting`
gives the master a fresh directory and sets `PROMETHEUS_MULTIPROC_DIR` before
any worker is forked; each worker then keeps its values in memory-mapped files
there (one file per process and metric type), and `GET /metrics` merges the
files of every process that ever ran: a counter of a worker that died (killed,
crashed, restarted) stays counted, so totals are exact and never go back.
Gauges are `livesum`: the files of a dead worker are removed by the master's
`child_exit` hook (`mark_process_dead`), so only live processes count.
Without that variable (the Flask test client, the unit tests, a single process)
the metrics are ordinary in-process values in the default registry.

The mode is chosen when `prometheus_client` is first imported in a process, so
the variable must be set before that (it is inherited through the fork).
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .jobmetrics import ConnectionGauges

#: The directory of the multiprocess files, or None in single-process mode.
MULTIPROCESS_DIR: str | None = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

#: `generate_latest`'s text format (0.0.4), which Prometheus and `promtool check metrics` read.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from about a millisecond to tens of seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# -- streams -----------------------------------------------------------------------

PROCESSES = Gauge(
    "sluice_processes",
    "Sluice server processes (gunicorn workers) alive and serving.",
    multiprocess_mode="livesum",
)
PROCESSES.set(1)

STREAMS_OPEN = Gauge(
    "sluice_streams_open",
    "Event streams (GET /api/events/stream responses) open now, over every worker.",
    multiprocess_mode="livesum",
)

#: The outcomes of a stream request, by the status it got (see `sluice.web.metrics`).
STREAM_OPEN_RESULTS = (
    "ok",
    "invalid",
    "unauthorized",
    "not_found",
    "rejected",
    "unavailable",
    "error",
)
STREAM_OPENS = Counter(
    "sluice_stream_opens",
    "Requests to open an event stream, by result: ok (200), invalid (400), "
    "unauthorized (401), not_found (404), rejected (429: too many streams), "
    "unavailable (503: draining or Redis down), error (anything else).",
    ["result"],
)
STREAM_OPENS_BY_RESULT = {
    result: STREAM_OPENS.labels(result=result) for result in STREAM_OPEN_RESULTS
}

EVENTS_DELIVERED = Counter(
    "sluice_events_delivered",
    "Events handed to stream clients (written, or queued for the client's own writer), "
    "counting one per event per client; history sent on resume included.",
)

STREAM_CUTOFFS = Counter(
    "sluice_stream_cutoffs",
    "Streams cut off because their client stopped reading while more than "
    "SLUICE_LISTENER_BUFFER_BYTES piled up (the client resumes from history).",
)

FANOUT_LAG = Histogram(
    "sluice_fanout_lag_seconds",
    "One observation per round of a process's shared reader: seconds from the append "
    "of the oldest entry it read (its stream id's time, Redis's clock) to the end of "
    "that round's fan-out to the clients in this process.",
    buckets=LATENCY_BUCKETS,
)

HUB_READS = Counter(
    "sluice_hub_reads",
    "Reads of the notified streams (one XREAD, or one per slot on a cluster, per "
    "round) made by the shared reader of each process.",
)

REDIS_ERRORS = Counter(
    "sluice_redis_errors",
    "Redis failures: requests answered 503 because of Redis, failed reads or "
    "subscriptions of the shared reader (each retried with backoff), and the job "
    "metrics' failed Redis calls (the gauges' read at scrape, label admissions).",
)

# -- ingest ------------------------------------------------------------------------

INGEST_REQUESTS = Counter(
    "sluice_ingest_requests",
    "POST /api/ingest requests, by HTTP status code.",
    ["status"],
)

_INGEST_BY_STATUS: dict[int, Counter] = {}


def ingest_requests(status: int) -> Counter:
    """`sluice_ingest_requests_total{status}`'s series, bound once per status code
    (a handful: the codes the endpoint answers with)."""
    counter = _INGEST_BY_STATUS.get(status)
    if counter is None:
        counter = _INGEST_BY_STATUS[status] = INGEST_REQUESTS.labels(status=str(status))
    return counter


INGEST_EVENTS = Counter(
    "sluice_ingest_events",
    "Events posted to /api/ingest, by result: accepted (appended), duplicate (an id "
    "already in the de-duplication window), rejected (in a batch refused as invalid "
    "or too large; nothing of it is stored).",
    ["result"],
)
INGEST_ACCEPTED = INGEST_EVENTS.labels(result="accepted")
INGEST_DUPLICATE = INGEST_EVENTS.labels(result="duplicate")
INGEST_REJECTED = INGEST_EVENTS.labels(result="rejected")

INGEST_SECONDS = Histogram(
    "sluice_ingest_seconds",
    "Seconds to answer POST /api/ingest, whatever the status (rate-limit refusals included).",
    buckets=LATENCY_BUCKETS,
)


# -- jobs --------------------------------------------------------------------------

#: Seconds, for background jobs: 10 ms to an hour.
JOB_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
JOB_LABELS = ("connection", "queue", "name")

JOBS_TOTAL = Counter(
    "sluice_jobs",
    "Job state changes accepted at ingest (duplicates and rejected batches not "
    "counted), by the state the job moved to. queue and name are capped per "
    "connection (SLUICE_METRICS_MAX_LABELS, the rest 'other').",
    [*JOB_LABELS, "state"],
)
JOB_RUNTIME = Histogram(
    "sluice_job_runtime_seconds",
    "Seconds from active to completed, failed or cancelled: one observation per "
    "accepted finishing event that carries its run's start and end.",
    JOB_LABELS,
    buckets=JOB_BUCKETS,
)
JOB_WAIT = Histogram(
    "sluice_job_wait_seconds",
    "Seconds from queued to active: one observation per accepted active event of a "
    "first attempt that carries its job's creation and start.",
    JOB_LABELS,
    buckets=JOB_BUCKETS,
)

#: Labels -> the bound series (bounded by the caps).
_JOB_SERIES: dict[tuple[str, str, str, str], Counter] = {}
_RUNTIME_SERIES: dict[tuple[str, str, str], Histogram] = {}
_WAIT_SERIES: dict[tuple[str, str, str], Histogram] = {}


def _bound(cache: dict[Any, Any], metric: Any, labels: tuple[str, ...]) -> Any:
    series = cache.get(labels)
    if series is None:
        series = cache[labels] = metric.labels(*labels)
    return series


def count_jobs(
    counts: dict[tuple[str, str, str, str], int],
    runtimes: list[tuple[tuple[str, str, str], float]],
    waits: list[tuple[tuple[str, str, str], float]],
) -> None:
    """Count one request's accepted job events: one `inc(n)` per label set, one
    observation per runtime and wait."""
    for labels, n in counts.items():
        _bound(_JOB_SERIES, JOBS_TOTAL, labels).inc(n)
    for job, seconds in runtimes:
        _bound(_RUNTIME_SERIES, JOB_RUNTIME, job).observe(seconds)
    for job, seconds in waits:
        _bound(_WAIT_SERIES, JOB_WAIT, job).observe(seconds)


class JobGauges(Collector):
    """Queue and worker gauges read at scrape time (`read`: the latest snapshots
    in Redis, the same on every worker and instance), never stored in a
    process: a worker or queue gone from the snapshots leaves no series.
    `read` returning None (Redis failed) yields nothing."""

    def __init__(self, read: Callable[[], list[ConnectionGauges] | None]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        data = self.read()
        if data is None:
            return []
        online = GaugeMetricFamily(
            "sluice_workers_online",
            "Workers of a connection whose latest snapshot is not offline (connections "
            "with any worker snapshot); from Redis at scrape time.",
            labels=["connection"],
        )
        depth = GaugeMetricFamily(
            "sluice_queue_depth",
            "Messages waiting in a queue, as its latest queue:snapshot said; from Redis "
            "at scrape time.",
            labels=["connection", "queue"],
        )
        consumers = GaugeMetricFamily(
            "sluice_queue_consumers",
            "Consumers of a queue, as its latest queue:snapshot said (when it said).",
            labels=["connection", "queue"],
        )
        oldest = GaugeMetricFamily(
            "sluice_queue_oldest_age_seconds",
            "Age of a queue's oldest waiting message, as its latest queue:snapshot said "
            "(extensions.oldestAgeSeconds, when sent).",
            labels=["connection", "queue"],
        )
        for gauges in data:
            if gauges.workers_online is not None:
                online.add_metric([gauges.connection], gauges.workers_online)
            for queue in gauges.queues:
                labels = [gauges.connection, queue.queue]
                depth.add_metric(labels, queue.depth)
                if queue.consumers is not None:
                    consumers.add_metric(labels, queue.consumers)
                if queue.oldest_age_seconds is not None:
                    oldest.add_metric(labels, queue.oldest_age_seconds)
        return [online, depth, consumers, oldest]


# -- exposition --------------------------------------------------------------------


def exposition(extra: Collector | None = None) -> bytes:
    """Every metric in the text format: this process's in single-process mode; in
    multiprocess mode every worker's, merged, plus each live worker's process
    metrics; then what `extra` collects at this scrape."""
    # A registry per scrape, as prometheus_client recommends: nothing else is
    # registered in it, so nothing is exported twice.
    registry = CollectorRegistry()
    if extra is not None:
        registry.register(extra)
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY) + (generate_latest(registry) if extra else b"")
    MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    registry.register(WorkerProcesses(MULTIPROCESS_DIR))
    return generate_latest(registry)


def live_pids(path: str) -> list[int]:
    """The worker processes alive now: those with live-gauge files in `path`
    (each worker's `sluice_processes` makes one at start; the master's
    `child_exit` removes them)."""
    pids = set()
    for name in glob.glob(os.path.join(path, "gauge_livesum_*.db")):
        digits = os.path.basename(name)[len("gauge_livesum_") : -len(".db")]
        if digits.isdigit():
            pids.add(int(digits))
    return sorted(pids)


class WorkerProcesses(Collector):
    """The standard process metrics (`process_cpu_seconds_total`,
    `process_resident_memory_bytes`, open fds, ...) of every live worker, read
    from /proc at scrape time and labelled `pid`.

    In multiprocess mode prometheus_client's own process collector would
    describe only the worker that happens to answer the scrape, a different
    one each time; summing by instance over `pid` gives the whole server.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in live_pids(self.path):
            collector = ProcessCollector(pid=functools.partial(str, pid), registry=None)
            for family in collector.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(families.values())
