"""Celery → Sluice ingest events: the one place that knows the mapping.

Both producers use it: the agent feeds it Celery's own event dicts (as sent
by workers and publishers over the broker), the in-worker integration feeds
it what Celery's signals carry. The mapping follows the contract's Celery
states (README, "Monitor your Celery"): task-sent/received → queued (scheduled with an ETA),
task-started → active, task-succeeded → completed, task-failed → failed,
task-retried → retrying, task-revoked → cancelled, task-rejected → failed;
worker-online/offline → worker_state_change, worker-heartbeat →
worker_heartbeat.

Producer event ids are derived from what the event *means* (task id, attempt,
state), not from when it was seen. A resent batch, a task-sent and a
task-received for the same attempt, or the agent and the integration
reporting the same transition all collapse to one stream event on the server.

No Celery import here: the functions take plain dicts and values.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Any

from ..timefmt import iso_from_ms, now_iso, parse_iso

FRAMEWORK = "celery"

# Contract limits (the ingest field limits, sluice/ingest.py).
MAX_EXTERNAL_ID = 512
MAX_NAME = 1024
MAX_QUEUE = 255
MAX_WORKER_ID = 512
MAX_HOSTNAME = 255
MAX_ERROR = 10_000
MAX_STACKTRACE = 50_000
#: The server limits `extensions` (8 KB by default); stay well under it.
MAX_EXTENSIONS_BYTES = 4_000
#: Reprs of arguments and results inside `extensions`.
MAX_REPR = 512

UNKNOWN_NAME = "unknown"

TASK_STATES = {
    "task-sent": "queued",
    "task-received": "queued",
    "task-started": "active",
    "task-succeeded": "completed",
    "task-failed": "failed",
    "task-retried": "retrying",
    "task-revoked": "cancelled",
    "task-rejected": "failed",
    # Celery 5.5+: a running task cancelled by the worker (e.g. broker connection lost).
    "task-cancelled": "cancelled",
}
TERMINAL = {"completed", "failed", "cancelled"}
WAITING = {"queued", "scheduled"}


# -- small helpers ----------------------------------------------------------


def iso(value: Any) -> str | None:
    """Epoch seconds, a datetime or an ISO string → the contract's UTC `...sssZ` form
    (the formatting itself is `sluice.timefmt`'s, shared with the server)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return iso_from_ms(int(float(value) * 1000))
    if isinstance(value, datetime):
        return parse_iso(value.isoformat())
    if isinstance(value, str):
        return parse_iso(value)
    return None


def clip(text: Any, limit: int) -> str | None:
    """Keep the head of `text` within `limit` characters (marking the cut)."""
    if text is None:
        return None
    text = str(text)
    if len(text) <= limit:
        return text
    marker = "…[truncated]"
    return text[: max(0, limit - len(marker))] + marker


def clip_tail(text: Any, limit: int) -> str | None:
    """Keep the tail of `text`: the end of a traceback is where the exception is."""
    if text is None:
        return None
    text = str(text)
    if len(text) <= limit:
        return text
    marker = "[truncated]…\n"
    return marker + text[-(limit - len(marker)) :]


def safe_repr(value: Any, limit: int = MAX_REPR) -> str:
    """A bounded repr that cannot raise (user objects have broken __repr__s)."""
    if isinstance(value, str):
        return clip(value, limit) or ""
    try:
        text = repr(value)
    except Exception as exc:  # pragma: no cover - defensive
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return clip(text, limit) or ""


def bounded_extensions(ext: dict[str, Any], limit: int = MAX_EXTENSIONS_BYTES) -> dict[str, Any]:
    """Drop empty values and shrink the largest entries until the JSON fits `limit` bytes."""
    out = {k: v for k, v in ext.items() if v is not None and v != "" and v != [] and v != {}}

    def size(d: dict) -> int:
        return len(json.dumps(d, separators=(",", ":"), default=str).encode())

    while out and size(out) > limit:
        key = max(out, key=lambda k: len(json.dumps(out[k], default=str)))
        current = json.dumps(out[key], default=str)
        if len(current) > 64:
            out[key] = clip(
                current if not isinstance(out[key], str) else out[key], len(current) // 2
            )
        else:
            del out[key]
    return out


def producer_id(*parts: Any) -> str:
    """A stable producer event id (≤ 200 chars) from what the event means."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"celery-{digest}"


def random_id() -> str:
    return f"celery-{uuid.uuid4().hex}"


def host_of(nodename: str | None) -> str | None:
    """`celery@web-1` → `web-1` (the machine), for the worker's `hostname` field."""
    if not nodename:
        return None
    return clip(nodename.split("@", 1)[1] if "@" in nodename else nodename, MAX_HOSTNAME)


def attempt_from_retries(retries: Any) -> int:
    try:
        return max(1, int(retries or 0) + 1)
    except (TypeError, ValueError):
        return 1


# -- ingest event builders ----------------------------------------------------


def job_event(
    connection_id: str,
    *,
    task_id: str,
    name: str | None,
    state: str,
    timestamp: Any = None,
    previous_state: str | None = None,
    attempt: int | None = None,
    queue: str | None = None,
    worker_id: str | None = None,
    error: Any = None,
    stacktrace: Any = None,
    created_at: Any = None,
    started_at: Any = None,
    finished_at: Any = None,
    max_retries: int | None = None,
    extensions: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A `job_state_change` ingest event; the id is stable for (task, attempt, state)."""
    job: dict[str, Any] = {
        "externalId": clip(task_id, MAX_EXTERNAL_ID),
        "name": clip(name or UNKNOWN_NAME, MAX_NAME),
        "state": state,
    }
    optional = {
        "previousState": previous_state,
        "queue": clip(queue, MAX_QUEUE),
        "workerId": clip(worker_id, MAX_WORKER_ID),
        "attempt": attempt,
        "maxRetries": max_retries if isinstance(max_retries, int) and max_retries >= 0 else None,
        "error": clip(error, MAX_ERROR),
        "stacktrace": clip_tail(stacktrace, MAX_STACKTRACE),
        "createdAt": iso(created_at),
        "startedAt": iso(started_at),
        "finishedAt": iso(finished_at),
    }
    job.update({k: v for k, v in optional.items() if v is not None})
    if extensions:
        extensions = dict(extensions)
        for key in ("args", "kwargs", "result"):  # reprs of user data: short, always
            if isinstance(extensions.get(key), str):
                extensions[key] = clip(extensions[key], MAX_REPR)
        ext = bounded_extensions(extensions)
        if ext:
            job["extensions"] = ext
    return {
        "id": event_id or producer_id("job", task_id, attempt or 1, state),
        "type": "job_state_change",
        "timestamp": iso(timestamp) or now_iso(),
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        "job": job,
    }


def worker_event(
    connection_id: str,
    *,
    kind: str,
    nodename: str,
    state: str,
    timestamp: Any = None,
    previous_state: str | None = None,
    active: int | None = None,
    concurrency: int | None = None,
    pid: int | None = None,
    queues: list[str] | None = None,
    extensions: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A `worker_heartbeat` or `worker_state_change` ingest event."""
    worker: dict[str, Any] = {"externalId": clip(nodename, MAX_WORKER_ID), "state": state}
    optional = {
        "hostname": host_of(nodename),
        "previousState": previous_state,
        "activeJobs": active if isinstance(active, int) and active >= 0 else None,
        "concurrency": concurrency if isinstance(concurrency, int) and concurrency >= 0 else None,
        "pid": pid if isinstance(pid, int) and pid >= 0 else None,
        "queues": [clip(q, MAX_QUEUE) for q in queues if q][:100] if queues else None,
    }
    worker.update({k: v for k, v in optional.items() if v is not None})
    if extensions:
        ext = bounded_extensions(extensions)
        if ext:
            worker["extensions"] = ext
    ts = iso(timestamp) or now_iso()
    return {
        "id": event_id or producer_id("worker", kind, nodename, state, ts),
        "type": kind,
        "timestamp": ts,
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        "worker": worker,
    }


def queue_event(
    connection_id: str,
    *,
    name: str,
    depth: int,
    consumers: int | None = None,
    timestamp: Any = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `queue_snapshot` ingest event (each snapshot is new: random id)."""
    queue: dict[str, Any] = {"name": clip(name, MAX_QUEUE), "depth": max(0, int(depth))}
    if consumers is not None:
        queue["consumers"] = max(0, int(consumers))
    if extensions:
        queue["extensions"] = bounded_extensions(extensions)
    return {
        "id": random_id(),
        "type": "queue_snapshot",
        "timestamp": iso(timestamp) or now_iso(),
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        "queue": queue,
    }


# -- the agent's mapper: Celery event dicts → ingest events -------------------


class _Task:
    __slots__ = (
        "name", "state", "attempt", "queue", "worker", "created", "started", "pending",
        "pending_since",
    )  # fmt: skip

    def __init__(self) -> None:
        self.name: str | None = None
        self.state: str | None = None
        self.attempt = 1
        self.queue: str | None = None
        self.worker: str | None = None
        self.created: Any = None
        self.started: Any = None
        #: The next attempt's events that came before the task-retried they follow.
        self.pending: list[dict[str, Any]] = []
        self.pending_since: float | None = None


class CeleryEventMapper:
    """Turns Celery event dicts into ingest events, remembering what later events omit.

    Celery's task-started/succeeded/failed events carry only the task id, so
    the task's name, queue, worker and attempt come from its earlier events
    (bounded LRU, like Flower's state). It also drops transitions that are no
    change (task-received after task-sent: both `queued`) or stale (a late
    `queued` after the same attempt already started).
    """

    def __init__(
        self, connection_id: str, max_tasks: int = 10_000, worker_timeout: float | None = None
    ) -> None:
        self.connection_id = connection_id
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self.workers: dict[str, dict[str, Any]] = {}
        #: Seconds without a heartbeat after which a worker is reported offline (None: 3 × its freq).
        self.worker_timeout = worker_timeout
        self.seen_task_events = 0
        self.seen_worker_events = 0
        self.queues_seen: set[str] = set()

    def _task(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = _Task()
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task_id)
        return task

    def map(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """One Celery event → zero or more ingest events."""
        kind = event.get("type", "")
        if kind.startswith("task-"):
            self.seen_task_events += 1
            return self._map_task_ordered(kind, event)
        if kind.startswith("worker-"):
            self.seen_worker_events += 1
            return self._map_worker(kind, event)
        return []

    def _map_task_ordered(self, kind: str, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """Put retries back in order.

        A retrying task publishes its next attempt (task-sent from the pool
        child, then task-received, even task-started) before the worker's main
        process reports task-retried for the attempt that failed. The next
        attempt's events are held until that task-retried arrives (or for at
        most `hold_seconds`, see `release_held`), so the stream reads
        active(1) → retrying(1) → queued(2) → active(2).
        """
        task_id = ev.get("uuid")
        task = self._tasks.get(task_id) if task_id else None
        if task is None:
            return [e for e in [self._map_task(kind, ev)] if e]
        if task.pending:
            if kind == "task-started" and task.state in WAITING:
                # The current attempt starting (its retry message went out early): apply it.
                return [e for e in [self._map_task(kind, ev)] if e]
            if kind != "task-retried":
                task.pending.append(ev)
                return []
            held, task.pending, task.pending_since = task.pending, [], None
            out = [e for e in [self._map_task(kind, ev)] if e]
            for e in held:  # in order again: a later attempt's retry may be held anew
                out += self._map_task_ordered(e.get("type", ""), e)
            return out
        if (
            kind in ("task-sent", "task-received")
            and task.state in ("queued", "scheduled", "active")
            and attempt_from_retries(ev.get("retries")) > task.attempt
        ):
            task.pending = [ev]
            task.pending_since = time.monotonic()
            return []
        return [e for e in [self._map_task(kind, ev)] if e]

    def release_held(self, hold_seconds: float = 3.0) -> list[dict[str, Any]]:
        """Events held for a task-retried that never came (task events partly lost)."""
        out: list[dict[str, Any]] = []
        now = time.monotonic()
        for task in self._tasks.values():
            if task.pending and now - (task.pending_since or now) >= hold_seconds:
                held, task.pending, task.pending_since = task.pending, [], None
                for h in held:
                    out += [e for e in [self._map_task(h.get("type", ""), h)] if e]
        return out

    def _map_task(self, kind: str, ev: dict[str, Any]) -> dict[str, Any] | None:
        state = TASK_STATES.get(kind)
        task_id = ev.get("uuid")
        if state is None or not task_id:
            return None
        task = self._task(task_id)
        if ev.get("name"):
            task.name = ev["name"]
        if kind == "task-sent":  # learn where it went, even from a late (stale) task-sent
            task.queue = ev.get("queue") or ev.get("routing_key") or task.queue
            if task.queue:
                self.queues_seen.add(task.queue)
        ts = ev.get("timestamp")
        if kind in ("task-sent", "task-received"):
            attempt = attempt_from_retries(ev.get("retries"))
            if ev.get("eta"):
                state = "scheduled"
            if attempt < task.attempt or (
                attempt == task.attempt and task.state is not None and task.state not in WAITING
            ):
                return None  # stale: this attempt is already past waiting
            if attempt > task.attempt:
                task.started = None
            task.attempt = attempt
            if task.created is None:
                task.created = ts
        if ev.get("hostname") and kind != "task-sent":
            task.worker = ev["hostname"]
        if state == "active":
            task.started = ts
        if state == task.state and kind != "task-retried":
            return None  # no change (e.g. task-received after task-sent)
        ext: dict[str, Any] = {
            "celeryEvent": kind,
            "args": ev.get("args") if kind in ("task-sent", "task-received") else None,
            "kwargs": ev.get("kwargs") if kind in ("task-sent", "task-received") else None,
            "eta": ev.get("eta"),
            "expires": ev.get("expires"),
            "routingKey": ev.get("routing_key"),
            "exchange": ev.get("exchange") or None,
            "rootId": ev.get("root_id") if ev.get("root_id") != task_id else None,
            "parentId": ev.get("parent_id"),
            "hostname": ev.get("hostname"),
            "pid": ev.get("pid"),
            "runtime": ev.get("runtime"),
            "result": ev.get("result"),
            "terminated": ev.get("terminated") or None,
            "signum": ev.get("signum"),
            "expired": ev.get("expired") or None,
            "requeue": ev.get("requeue") if kind == "task-rejected" else None,
        }
        for key in ("args", "kwargs", "result"):
            if ext[key] is not None:
                ext[key] = clip(ext[key], MAX_REPR)
        error = stack = None
        if kind in ("task-failed", "task-retried"):
            error = ev.get("exception")
            stack = ev.get("traceback")
        elif kind == "task-rejected":
            error = "rejected by the worker" + (" (requeued)" if ev.get("requeue") else "")
        attempt = task.attempt  # held events of the next attempt are not applied yet
        previous = task.state
        task.state = state
        return job_event(
            self.connection_id,
            task_id=task_id,
            name=task.name,
            state=state,
            timestamp=ts,
            previous_state=previous,
            attempt=attempt,
            queue=task.queue,
            worker_id=task.worker,
            error=error,
            stacktrace=stack,
            created_at=task.created,
            started_at=task.started if state != "scheduled" and state not in WAITING else None,
            finished_at=ts if state in TERMINAL else None,
            extensions=ext,
        )

    def _map_worker(self, kind: str, ev: dict[str, Any]) -> list[dict[str, Any]]:
        node = ev.get("hostname")
        if not node:
            return []
        ts = ev.get("timestamp")
        known = self.workers.get(node)
        ext = {
            "freq": ev.get("freq"),
            "processed": ev.get("processed"),
            "loadavg": ev.get("loadavg"),
            "swIdent": ev.get("sw_ident"),
            "swVer": ev.get("sw_ver"),
            "swSys": ev.get("sw_sys"),
        }
        common = {"nodename": node, "timestamp": ts, "pid": ev.get("pid"), "extensions": ext}
        out: list[dict[str, Any]] = []
        if kind == "worker-offline":
            previous = known["state"] if known else None
            self.workers[node] = {
                "state": "offline",
                "last": time.monotonic(),
                "freq": ev.get("freq"),
            }
            if previous == "offline":
                return []
            out.append(
                worker_event(
                    self.connection_id,
                    kind="worker_state_change",
                    state="offline",
                    previous_state=previous or "online",
                    active=0,
                    **common,
                )
            )
            return out
        if known is None or known["state"] == "offline":
            # worker-online, or the first heartbeat of a worker that was up before we were.
            out.append(
                worker_event(
                    self.connection_id,
                    kind="worker_state_change",
                    state="online",
                    previous_state="offline",
                    active=ev.get("active"),
                    **common,
                )
            )
        self.workers[node] = {
            "state": "online",
            "last": time.monotonic(),
            "freq": ev.get("freq") or 2.0,
        }
        if kind == "worker-heartbeat":
            active = ev.get("active")
            out.append(
                worker_event(
                    self.connection_id,
                    kind="worker_heartbeat",
                    state="busy" if active else "idle",
                    active=active if isinstance(active, int) else None,
                    event_id=producer_id("hb", node, ev.get("timestamp"), ev.get("clock")),
                    **common,
                )
            )
        return out

    def expire_workers(self) -> list[dict[str, Any]]:
        """Workers silent past their heartbeat window (killed, not shut down) → offline."""
        out: list[dict[str, Any]] = []
        now = time.monotonic()
        for node, info in self.workers.items():
            if info["state"] == "offline":
                continue
            timeout = self.worker_timeout or max(3.0 * float(info.get("freq") or 2.0), 5.0)
            if now - info["last"] > timeout:
                info["state"] = "offline"
                out.append(
                    worker_event(
                        self.connection_id,
                        kind="worker_state_change",
                        nodename=node,
                        state="offline",
                        previous_state="online",
                        active=0,
                        extensions={"reason": f"no heartbeat for {timeout:g} s"},
                    )
                )
        return out
