"""The agent's memory of Celery tasks and workers: Celery event dicts → ingest events.

Celery's own events (as workers and publishers send them over the broker)
say only what changed; `CeleryEventMapper` remembers the rest (a task's name,
queue, worker and attempt; each worker's last heartbeat), puts retries back in
order and drops transitions that are no change. The events it returns are
built by `mapping`, the one mapping shared with the in-worker integration.

No Celery import here: it takes plain dicts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from .mapping import (
    ACTIVE,
    OFFLINE,
    ONLINE,
    QUEUED,
    SCHEDULED,
    TASK_STATES,
    TERMINAL,
    WAITING,
    WORKER_HEARTBEAT,
    WORKER_STATE_CHANGE,
    attempt_from_retries,
    heartbeat_state,
    job_event,
    message_extensions,
    producer_id,
    revoke_extensions,
    waiting_state,
    worker_event,
)


class _Task:
    __slots__ = (
        "name", "state", "attempt", "queue", "worker", "created", "started", "pending",
        "pending_since", "retry_of",
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
        #: The external id of the job this task re-sent (an operator's retry).
        self.retry_of: str | None = None


class CeleryEventMapper:
    """Turns Celery event dicts into ingest events, remembering what later events omit.

    Celery's task-started/succeeded/failed events carry only the task id, so
    the task's name, queue, worker and attempt come from its earlier events
    (bounded LRU, like Flower's state). It also drops transitions that are no
    change (a repeated event: the same state, and no worker newly holding the
    task; task-received after task-sent is sent, with its worker) or stale (a late
    `queued` after the same attempt already started).

    Celery's events carry the reprs of a task's arguments (task-sent,
    task-received: Celery's `argsrepr`/`kwargsrepr`) and result
    (task-succeeded); without `capture_args` none of them is sent.
    """

    def __init__(
        self,
        connection_id: str,
        max_tasks: int = 10_000,
        worker_timeout: float | None = None,
        *,
        capture_args: bool = True,
    ) -> None:
        self.connection_id = connection_id
        #: Send the reprs of arguments and results (`mapping.USER_DATA_KEYS`).
        self.capture_args = capture_args
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

    def note_retry(self, task_id: str, retry_of: str, name: str, queue: str | None) -> None:
        """A task the agent sent to retry job `retry_of` (an operator's action): its
        events carry `extensions.retryOf`, so the new job stays linked to the original
        whatever its latest state."""
        task = self._task(task_id)
        task.retry_of = retry_of
        task.name = task.name or name
        task.queue = task.queue or queue
        task.state = task.state or QUEUED  # the agent reported it queued itself

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
            return self._mapped(kind, ev)
        if task.pending:
            if kind == "task-started" and task.state in WAITING:
                # The current attempt starting (its retry message went out early): apply it.
                return self._mapped(kind, ev)
            if kind != "task-retried":
                task.pending.append(ev)
                return []
            held, task.pending, task.pending_since = task.pending, [], None
            out = self._mapped(kind, ev)
            for e in held:  # in order again: a later attempt's retry may be held anew
                out += self._map_task_ordered(e.get("type", ""), e)
            return out
        if (
            kind in ("task-sent", "task-received")
            and task.state in (QUEUED, SCHEDULED, ACTIVE)
            and attempt_from_retries(ev.get("retries")) > task.attempt
        ):
            task.pending = [ev]
            task.pending_since = time.monotonic()
            return []
        return self._mapped(kind, ev)

    def _mapped(self, kind: str, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """The event `_map_task` makes of `ev`, as a list (empty when none)."""
        event = self._map_task(kind, ev)
        return [event] if event else []

    def release_held(self, hold_seconds: float = 3.0) -> list[dict[str, Any]]:
        """Events held for a task-retried that never came (task events partly lost)."""
        out: list[dict[str, Any]] = []
        now = time.monotonic()
        for task in self._tasks.values():
            if task.pending and now - (task.pending_since or now) >= hold_seconds:
                held, task.pending, task.pending_since = task.pending, [], None
                for h in held:
                    out += self._mapped(h.get("type", ""), h)
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
            state = waiting_state(ev.get("eta"))
            if attempt < task.attempt or (
                attempt == task.attempt and task.state is not None and task.state not in WAITING
            ):
                return None  # stale: this attempt is already past waiting
            if attempt > task.attempt:
                task.started = None
                task.worker = None  # a new attempt: no worker holds it yet
            task.attempt = attempt
            if task.created is None:
                task.created = ts
        # task-received: a worker now holds (has reserved) the waiting task; sent
        # even though the state stays the same, so that the job says which worker.
        reserved = kind == "task-received" and bool(ev.get("hostname"))
        reserved = reserved and ev.get("hostname") != task.worker
        if ev.get("hostname") and kind != "task-sent":
            task.worker = ev["hostname"]
        if state == ACTIVE:
            task.started = ts
        if state == task.state and kind != "task-retried" and not reserved:
            return None  # no change (e.g. a second task-received)
        message = kind in ("task-sent", "task-received")
        ext: dict[str, Any] = {
            "celeryEvent": kind,
            **message_extensions(
                task_id,
                args=ev.get("args") if message else None,
                kwargs=ev.get("kwargs") if message else None,
                eta=ev.get("eta"),
                expires=ev.get("expires"),
                routing_key=ev.get("routing_key"),
                exchange=ev.get("exchange"),
                root_id=ev.get("root_id"),
                parent_id=ev.get("parent_id"),
            ),
            "hostname": ev.get("hostname"),
            "pid": ev.get("pid"),
            "runtime": ev.get("runtime"),
            "result": ev.get("result"),
            **revoke_extensions(ev.get("terminated"), ev.get("signum"), ev.get("expired")),
            "requeue": ev.get("requeue") if kind == "task-rejected" else None,
            "retryOf": task.retry_of,
        }
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
            started_at=task.started if state not in WAITING else None,
            finished_at=ts if state in TERMINAL else None,
            extensions=ext,
            capture_args=self.capture_args,
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
                "state": OFFLINE,
                "last": time.monotonic(),
                "freq": ev.get("freq"),
            }
            if previous == OFFLINE:
                return []
            out.append(
                worker_event(
                    self.connection_id,
                    kind=WORKER_STATE_CHANGE,
                    state=OFFLINE,
                    previous_state=previous or ONLINE,
                    active=0,
                    **common,
                )
            )
            return out
        if known is None or known["state"] == OFFLINE:
            # worker-online, or the first heartbeat of a worker that was up before we were.
            out.append(
                worker_event(
                    self.connection_id,
                    kind=WORKER_STATE_CHANGE,
                    state=ONLINE,
                    previous_state=OFFLINE,
                    active=ev.get("active"),
                    **common,
                )
            )
        self.workers[node] = {
            "state": ONLINE,
            "last": time.monotonic(),
            "freq": ev.get("freq") or 2.0,
        }
        if kind == "worker-heartbeat":
            active = ev.get("active")
            out.append(
                worker_event(
                    self.connection_id,
                    kind=WORKER_HEARTBEAT,
                    state=heartbeat_state(active),
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
            if info["state"] == OFFLINE:
                continue
            timeout = self.worker_timeout or max(3.0 * float(info.get("freq") or 2.0), 5.0)
            if now - info["last"] > timeout:
                info["state"] = OFFLINE
                out.append(
                    worker_event(
                        self.connection_id,
                        kind=WORKER_STATE_CHANGE,
                        nodename=node,
                        state=OFFLINE,
                        previous_state=ONLINE,
                        active=0,
                        extensions={"reason": f"no heartbeat for {timeout:g} s"},
                    )
                )
        return out
