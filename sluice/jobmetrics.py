"""Job metrics, the pure parts: what a job event says of runtime and wait, which
label values a connection's series get (the cap), whether a worker is online,
and the queue and worker gauges made of the latest snapshots. No I/O: the
label admissions shared through Redis are asked by the caller
(`sluice.store.jobmetrics`), the counting is `sluice.metrics`'s.

See docs/observability.md, "Job metrics".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import liveness
from .contract import WORKER_STATES

#: The label value of everything past a cap.
OTHER = "other"
#: The label kinds capped per connection.
QUEUE, NAME = "queue", "name"
#: States a job's run ends in: `active` -> one of these is its runtime.
FINISHED = frozenset({"completed", "failed", "cancelled"})
#: The state a job's wait ends in.
STARTED = "active"
#: A worker's state that means it is gone.
OFFLINE = liveness.OFFLINE
assert OFFLINE in WORKER_STATES


def _moment(iso: Any) -> datetime | None:
    """A normalised timestamp (`2026-02-27T10:30:00.123Z`, as ingest stores it)."""
    if not isinstance(iso, str) or not iso.endswith("Z"):
        return None
    try:
        return datetime.fromisoformat(iso[:-1] + "+00:00")
    except ValueError:
        return None


def _span(start: Any, end: Any) -> float | None:
    """Seconds from `start` to `end` (exact to the millisecond); None when either
    is missing or `end` is before `start`."""
    begin, finish = _moment(start), _moment(end)
    if begin is None or finish is None or finish < begin:
        return None
    return (finish - begin).total_seconds()


def runtime_seconds(data: dict[str, Any]) -> float | None:
    """A finishing event's (completed, failed, cancelled) runtime: `finishedAt` -
    `startedAt` when it carries both; else `extensions.runtime` when it is a
    number of seconds >= 0 (what both Celery bridges send: Celery's own
    measure); else None (not observed). A negative span is not observed."""
    if data.get("state") not in FINISHED:
        return None
    started, finished = data.get("startedAt"), data.get("finishedAt")
    if started is not None and finished is not None:
        span = _span(started, finished)
        if span is not None:
            return span
    extensions = data.get("extensions")
    runtime = extensions.get("runtime") if isinstance(extensions, dict) else None
    if (
        runtime is not None
        and type(runtime) in (int, float)  # not bool
        and math.isfinite(runtime)
        and runtime >= 0
    ):
        return float(runtime)
    return None


def wait_seconds(data: dict[str, Any]) -> float | None:
    """An `active` event's wait in its queue: `startedAt` - `createdAt`, when it
    carries both, is the job's first attempt (`attempt` absent or 1: a retry's
    `createdAt` is still the job's creation) and was not `scheduled` before
    (its wait would include the delay it was scheduled for); else None."""
    if data.get("state") != STARTED:
        return None
    if data.get("previousState") == "scheduled" or (data.get("attempt") or 1) != 1:
        return None
    return _span(data.get("createdAt"), data.get("startedAt"))


def worker_online(snapshot: dict[str, Any], now_ms: int, expiry_seconds: float) -> bool:
    """Whether a worker counts as online, from its latest snapshot
    (`worker:heartbeat` or `worker:state_change` data) and the time now: unless
    it said `offline` or its heartbeats stopped more than `expiry_seconds` ago.
    The rule is `sluice.liveness`'s, shared with the workers API and the dashboard."""
    return liveness.worker_online(snapshot, now_ms, expiry_seconds)


# -- label caps ----------------------------------------------------------------------


@dataclass
class _Admitted:
    """One connection's admitted values of one kind, as this process knows them."""

    values: set[str] = field(default_factory=set)
    #: The shared set is full: a value not in `values` is `other`, without asking.
    full: bool = False


@dataclass
class Admission:
    """What Redis answered for one kind: the values admitted (now or before), and
    when the set is full, every member (so nothing more need be asked)."""

    admitted: list[str]
    members: list[str] | None = None


class LabelCaps:
    """Per process: the label values each connection's job series get.

    Queue and task names are admitted per connection, the first `max_labels`
    distinct values for good (decided in Redis, shared by every process);
    this remembers the answers, so a value costs one question once per
    process, and once a connection's set is full nothing more is asked. The
    empty value (no queue) is always its own label. At most `max_connections`
    connections get series of their own here; later ones are `other`, their
    queue and name too.
    """

    def __init__(self, max_labels: int, max_connections: int) -> None:
        self.max_labels = max_labels
        self.max_connections = max_connections
        self._known: dict[str, dict[str, _Admitted]] = {}

    def connection(self, connection_id: str) -> str:
        """The connection's label: itself, or `other` past the cap."""
        if connection_id in self._known:
            return connection_id
        if len(self._known) >= self.max_connections:
            return OTHER
        self._known[connection_id] = {QUEUE: _Admitted(), NAME: _Admitted()}
        return connection_id

    def undecided(self, connection_id: str, kind: str, values: Iterable[str]) -> list[str]:
        """The values of `kind` this process must ask Redis about (sorted)."""
        known = self._known.get(connection_id)
        if known is None:
            return []
        admitted = known[kind]
        if admitted.full:
            return []
        return sorted({v for v in values if v and v not in admitted.values})

    def learn(self, connection_id: str, kind: str, answer: Admission) -> None:
        known = self._known.get(connection_id)
        if known is None:
            return
        admitted = known[kind]
        admitted.values.update(answer.admitted)
        if answer.members is not None:
            admitted.values.update(answer.members)
            admitted.full = True

    def label(self, connection_label: str, kind: str, value: str) -> str:
        """`value`'s label in the series of `connection_label` (as `connection`
        gave it): itself when admitted (or empty), else `other`."""
        if connection_label == OTHER:
            return OTHER
        if not value:
            return value
        known = self._known.get(connection_label)
        if known is not None and value in known[kind].values:
            return value
        return OTHER


# -- gauges --------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueGauge:
    """One queue label's gauges: depth and consumers summed over the snapshots
    it covers (`other` covers several), oldest age the largest; None where no
    snapshot said."""

    queue: str
    depth: int
    consumers: int | None
    oldest_age_seconds: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def oldest_age_seconds(snapshot: dict[str, Any]) -> float | None:
    """The age of a queue's oldest waiting message when its snapshot says:
    `extensions.oldestAgeSeconds`, a number >= 0 (no bridge sends it yet)."""
    extensions = snapshot.get("extensions")
    if isinstance(extensions, dict):
        return _number(extensions.get("oldestAgeSeconds"))
    return None


def queue_gauges(snapshots: Iterable[dict[str, Any]], admitted: set[str]) -> list[QueueGauge]:
    """The queue gauges of one connection from its latest `queue:snapshot` data:
    a queue admitted as a label has its own, the rest are summed as `other`."""
    merged: dict[str, list[Any]] = {}
    for snapshot in snapshots:
        name = snapshot.get("name")
        depth = snapshot.get("depth")
        if not isinstance(name, str) or not isinstance(depth, int):
            continue
        label = name if name in admitted else OTHER
        entry = merged.setdefault(label, [0, None, None])
        entry[0] += depth
        consumers = snapshot.get("consumers")
        if isinstance(consumers, int) and not isinstance(consumers, bool):
            entry[1] = (entry[1] or 0) + consumers
        age = oldest_age_seconds(snapshot)
        if age is not None:
            entry[2] = age if entry[2] is None else max(entry[2], age)
    return [QueueGauge(label, *values) for label, values in sorted(merged.items())]


def workers_online(
    snapshots: Iterable[dict[str, Any]], now_ms: int, expiry_seconds: float
) -> int | None:
    """How many of a connection's workers are online at `now_ms` (see
    `worker_online`); None when it has no worker snapshot at all (no series
    rather than a 0 that says "all down")."""
    count, seen = 0, False
    for snapshot in snapshots:
        seen = True
        if worker_online(snapshot, now_ms, expiry_seconds):
            count += 1
    return count if seen else None


@dataclass(frozen=True)
class ConnectionGauges:
    """What a scrape exports for one connection."""

    connection: str
    workers_online: int | None
    queues: list[QueueGauge]
