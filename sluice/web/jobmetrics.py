"""Job metrics in the web layer: the ingest view's counting of accepted job events
(`count_accepted`), and the queue and worker gauges a scrape reads from Redis
(`read_gauges`).

Counters and histograms are counted in the process that ingested (multiprocess
files, like the service metrics); the label caps are decided in Redis
(`store.jobmetrics.admit_labels`) and remembered per process
(`jobmetrics.LabelCaps`). Gauges are never counted here: each scrape reads the
latest snapshots of the connections that ingested lately. See
docs/observability.md, "Job metrics".
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ..config import Settings
from ..contract import JOB_STATE_CHANGE, QUEUE_SNAPSHOT
from ..jobmetrics import (
    FINISHED,
    NAME,
    OTHER,
    QUEUE,
    STARTED,
    ConnectionGauges,
    LabelCaps,
    queue_gauges,
    runtime_seconds,
    wait_seconds,
    workers_online,
)
from ..metrics import REDIS_ERRORS, count_jobs
from ..store.client import STORE_ERRORS, Redis
from ..store.jobmetrics import admit_labels, note_connection, recent_snapshots

#: Seconds between two notes of one connection's activity by one process.
NOTE_EVERY = 10.0
#: Connections whose last note a process remembers (then it starts over).
MAX_NOTED = 10_000

_caps: LabelCaps | None = None
_noted: dict[str, float] = {}


def caps(settings: Settings) -> LabelCaps:
    """This process's label caps (made again if the settings' caps differ: tests)."""
    global _caps
    if (
        _caps is None
        or _caps.max_labels != settings.metrics_max_labels
        or _caps.max_connections != settings.metrics_max_connections
    ):
        _caps = LabelCaps(settings.metrics_max_labels, settings.metrics_max_connections)
    return _caps


def _keep_ms(settings: Settings) -> int:
    return int(settings.job_retention_hours * 3_600_000)


def count_accepted(
    r: Redis, connection_id: str, settings: Settings, appended: list[tuple[str, dict[str, Any]]]
) -> None:
    """Count what one ingest request appended ((event name, data) of each event
    stored, duplicates left out): `sluice_jobs_total`, the runtime and wait
    histograms; and note the connection as active for the gauges. A Redis
    failure here never fails the request: values not yet decided count as
    `other` this once, and the failure is counted."""
    label_caps = caps(settings)
    connection = label_caps.connection(connection_id)
    jobs = [data for name, data in appended if name == JOB_STATE_CHANGE]
    if connection != OTHER:
        # Distinct values first: a batch holds few queues and task names.
        queue_values = {d.get("queue") or "" for d in jobs}
        queue_values.update(d["name"] for name, d in appended if name == QUEUE_SNAPSHOT)
        queues = label_caps.undecided(connection, QUEUE, queue_values)
        names = label_caps.undecided(connection, NAME, {d["name"] for d in jobs})
        if queues or names:
            try:
                answer = admit_labels(r, connection_id, queues, names, settings.metrics_max_labels)
            except STORE_ERRORS:
                REDIS_ERRORS.inc()
            else:
                for kind, admission in answer.items():
                    label_caps.learn(connection, kind, admission)
    if jobs:
        labelled: dict[tuple[str, str], tuple[str, str, str]] = {}

        def labels_of(queue: str, name: str) -> tuple[str, str, str]:
            labels = labelled.get((queue, name))
            if labels is None:
                labels = labelled[(queue, name)] = (
                    connection,
                    label_caps.label(connection, QUEUE, queue),
                    label_caps.label(connection, NAME, name),
                )
            return labels

        # Counted per distinct (queue, name, state) first: a batch holds few.
        raw = Counter((d.get("queue") or "", d["name"], d["state"]) for d in jobs)
        counts: dict[tuple[str, str, str, str], int] = {}
        for (queue, name, state), n in raw.items():
            key = (*labels_of(queue, name), state)
            counts[key] = counts.get(key, 0) + n
        runtimes: list[tuple[tuple[str, str, str], float]] = []
        waits: list[tuple[tuple[str, str, str], float]] = []
        for data in jobs:
            state = data["state"]
            if state in FINISHED:
                runtime = runtime_seconds(data)
                if runtime is not None:
                    runtimes.append((labels_of(data.get("queue") or "", data["name"]), runtime))
            elif state == STARTED:
                wait = wait_seconds(data)
                if wait is not None:
                    waits.append((labels_of(data.get("queue") or "", data["name"]), wait))
        count_jobs(counts, runtimes, waits)
    _note(r, connection_id, settings)


def _note(r: Redis, connection_id: str, settings: Settings) -> None:
    now = time.monotonic()
    if now - _noted.get(connection_id, -NOTE_EVERY) < NOTE_EVERY:
        return
    if len(_noted) >= MAX_NOTED:
        _noted.clear()
    _noted[connection_id] = now
    try:
        note_connection(r, connection_id, int(time.time() * 1000), _keep_ms(settings))
    except STORE_ERRORS:
        REDIS_ERRORS.inc()


def read_gauges(r: Redis, settings: Settings) -> list[ConnectionGauges] | None:
    """The queue and worker gauges of the most recently active connections
    (at most SLUICE_METRICS_MAX_CONNECTIONS, active within the job retention),
    from their latest snapshots (a worker silent past SLUICE_WORKER_EXPIRY_SECONDS
    is not online); None (and a Redis error counted) when Redis
    fails."""
    now_ms = int(time.time() * 1000)
    try:
        rows = recent_snapshots(r, now_ms, _keep_ms(settings), settings.metrics_max_connections)
    except STORE_ERRORS:
        REDIS_ERRORS.inc()
        return None
    expiry = settings.worker_expiry_seconds
    return [
        ConnectionGauges(
            connection_id,
            workers_online(workers, now_ms, expiry),
            queue_gauges(queues, admitted),
        )
        for connection_id, workers, queues, admitted in rows
    ]
