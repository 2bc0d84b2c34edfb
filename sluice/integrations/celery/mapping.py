"""Celery → Sluice ingest events: the one place that knows the mapping.

Both producers use it: the agent's state (`state.CeleryEventMapper`) feeds it
Celery's own event dicts (as sent by workers and publishers over the broker),
the in-worker integration (`integration`) feeds it what Celery's signals
carry. Event types, payload fields, states and field limits are the ones
`sluice.contract` defines. The mapping follows the contract's Celery
states (README, "Monitor your Celery"): task-sent/received → queued (scheduled with an ETA),
task-started → active, task-succeeded → completed, task-failed → failed,
task-retried → retrying, task-revoked → cancelled, task-rejected → failed;
worker-online/offline → worker_state_change, worker-heartbeat →
worker_heartbeat.

Producer event ids are derived from what the event *means* (task id, attempt,
state, and for a waiting task the worker that received it), not from when it
was seen. A resent batch, or the agent and the integration reporting the same
transition all collapse to one stream event on the server; a task-received
(`queued` with the worker that reserved it) is one event after the task-sent's
`queued`.

What a person needs to debug a task travels in every producer's events the
same way: the reprs of its arguments and keyword arguments (on the events of
its messages: published, received), of its result (on success), each cut to
`MAX_REPR` characters, and its traceback (on failure and retry, the end kept,
`contract.MAX_STACKTRACE`). The server's job index keeps the last of each
for the job's detail view. `job_event(capture_args=False)` drops the reprs
(`USER_DATA_KEYS`); exceptions and tracebacks are still sent.

Pure: no Celery import and no I/O here; the functions take plain dicts and values.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from ... import contract
from ...timefmt import iso_from_ms, now_iso, parse_iso


def _from_contract(values: Iterable[str], name: str) -> str:
    """`name`, checked against one of the contract's lists when this module is imported."""
    if name not in values:
        raise RuntimeError(f"sluice.contract no longer defines {name!r}")
    return name


def _producer_type(event_name: str) -> str:
    """The producer event `type` that the server stores as `event_name`."""
    for kind, (_field, stored_as) in contract.PRODUCER_TYPES.items():
        if stored_as == event_name:
            return kind
    raise RuntimeError(f"sluice.contract has no producer type for {event_name!r}")


FRAMEWORK: Final = _from_contract(contract.FRAMEWORKS, "celery")

#: Producer event types (`job_state_change`, ...), as `contract.PRODUCER_TYPES` names them.
JOB_STATE_CHANGE: Final = _producer_type(contract.JOB_STATE_CHANGE)
WORKER_HEARTBEAT: Final = _producer_type(contract.WORKER_HEARTBEAT)
WORKER_STATE_CHANGE: Final = _producer_type(contract.WORKER_STATE_CHANGE)
QUEUE_SNAPSHOT: Final = _producer_type(contract.QUEUE_SNAPSHOT)
#: The outcome of an operator's action, which the agent carries out (`actions`).
COMMAND_RESULT: Final = _producer_type(contract.COMMAND_RESULT)
#: The payload field of each (`job`, `worker`, `queue`).
JOB_FIELD: Final = contract.PRODUCER_TYPES[JOB_STATE_CHANGE][0]
WORKER_FIELD: Final = contract.PRODUCER_TYPES[WORKER_STATE_CHANGE][0]
QUEUE_FIELD: Final = contract.PRODUCER_TYPES[QUEUE_SNAPSHOT][0]
COMMAND_FIELD: Final = contract.PRODUCER_TYPES[COMMAND_RESULT][0]

#: Job states (`contract.JOB_STATES`).
QUEUED: Final = _from_contract(contract.JOB_STATES, "queued")
SCHEDULED: Final = _from_contract(contract.JOB_STATES, "scheduled")
ACTIVE: Final = _from_contract(contract.JOB_STATES, "active")
COMPLETED: Final = _from_contract(contract.JOB_STATES, "completed")
FAILED: Final = _from_contract(contract.JOB_STATES, "failed")
RETRYING: Final = _from_contract(contract.JOB_STATES, "retrying")
CANCELLED: Final = _from_contract(contract.JOB_STATES, "cancelled")
TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})
WAITING: Final = frozenset({QUEUED, SCHEDULED})

#: Worker states (`contract.WORKER_STATES`).
ONLINE: Final = _from_contract(contract.WORKER_STATES, "online")
BUSY: Final = _from_contract(contract.WORKER_STATES, "busy")
IDLE: Final = _from_contract(contract.WORKER_STATES, "idle")
OFFLINE: Final = _from_contract(contract.WORKER_STATES, "offline")

#: The server limits `extensions` (8 KB by default); stay well under it.
MAX_EXTENSIONS_BYTES: Final = 4_000
#: Reprs of arguments and results inside `extensions`.
MAX_REPR: Final = 512
#: The `extensions` keys that hold the task's own data: reprs of its positional
#: and keyword arguments and of its result. Turning argument capture off
#: (`install(app, capture_args=False)`, `celery-agent --no-args`) drops all three.
USER_DATA_KEYS: Final = ("args", "kwargs", "result")

#: A job's `name` when Celery did not say it (a task event seen without its task-sent).
UNKNOWN_NAME: Final = "unknown"

#: Celery's task event types → job states.
TASK_STATES: Final[dict[str, str]] = {
    "task-sent": QUEUED,
    "task-received": QUEUED,
    "task-started": ACTIVE,
    "task-succeeded": COMPLETED,
    "task-failed": FAILED,
    "task-retried": RETRYING,
    "task-revoked": CANCELLED,
    "task-rejected": FAILED,
    # Celery 5.5+: a running task cancelled by the worker (e.g. broker connection lost).
    "task-cancelled": CANCELLED,
}


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

    def size(d: dict[str, Any]) -> int:
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
    return f"{FRAMEWORK}-{digest}"


def random_id() -> str:
    return f"{FRAMEWORK}-{uuid.uuid4().hex}"


def host_of(nodename: str | None) -> str | None:
    """`celery@web-1` → `web-1` (the machine), for the worker's `hostname` field."""
    if not nodename:
        return None
    return clip(nodename.split("@", 1)[1] if "@" in nodename else nodename, contract.MAX_HOSTNAME)


def attempt_from_retries(retries: Any) -> int:
    try:
        return max(1, int(retries or 0) + 1)
    except (TypeError, ValueError):
        return 1


# -- Celery facts → fields, the same for both producers ---------------------------


def waiting_state(eta: Any) -> str:
    """A task waiting for a worker: `scheduled` when it has an ETA (or countdown), else `queued`."""
    return SCHEDULED if eta else QUEUED


def heartbeat_state(active: Any) -> str:
    """A worker's state in a heartbeat: `busy` while it runs tasks, else `idle`."""
    return BUSY if active else IDLE


def describe_exception(exc: Any) -> str | None:
    """A job's `error` from an exception (`Type: message`) or whatever Celery gave instead."""
    if exc is None:
        return None
    if isinstance(exc, BaseException):
        text = str(exc)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return safe_repr(exc, contract.MAX_ERROR)


def message_extensions(
    task_id: str,
    *,
    args: Any,
    kwargs: Any,
    eta: Any,
    expires: Any,
    routing_key: Any,
    exchange: Any,
    root_id: Any,
    parent_id: Any,
) -> dict[str, Any]:
    """What a task message says of itself (a publish, task-sent/received), for `extensions`.

    The keys keep this order in every event that has them; empty values are
    dropped later, by `bounded_extensions`.
    """
    return {
        "args": args,
        "kwargs": kwargs,
        "eta": eta,
        "expires": expires,
        "routingKey": routing_key,
        "exchange": exchange or None,
        "rootId": root_id if root_id != task_id else None,
        "parentId": parent_id,
    }


def revoke_extensions(terminated: Any, signum: Any, expired: Any) -> dict[str, Any]:
    """How a task was revoked (task_revoked, task-revoked), for `extensions`."""
    return {"terminated": terminated or None, "signum": signum, "expired": expired or None}


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
    capture_args: bool = True,
) -> dict[str, Any]:
    """A `job_state_change` producer event; the id is stable for (task, attempt, state).

    Without `capture_args`, the task's arguments and result (`USER_DATA_KEYS`)
    never leave: whichever Celery event or signal brought them, they are dropped
    here, the one place every job event of both producers is built.
    """
    job: dict[str, Any] = {
        "externalId": clip(task_id, contract.MAX_EXTERNAL_ID),
        "name": clip(name or UNKNOWN_NAME, contract.MAX_JOB_NAME),
        "state": state,
    }
    optional = {
        "previousState": previous_state,
        "queue": clip(queue, contract.MAX_QUEUE_NAME),
        "workerId": clip(worker_id, contract.MAX_EXTERNAL_ID),  # a worker's externalId
        "attempt": attempt,
        "maxRetries": max_retries if isinstance(max_retries, int) and max_retries >= 0 else None,
        "error": clip(error, contract.MAX_ERROR),
        "stacktrace": clip_tail(stacktrace, contract.MAX_STACKTRACE),
        "createdAt": iso(created_at),
        "startedAt": iso(started_at),
        "finishedAt": iso(finished_at),
    }
    job.update({k: v for k, v in optional.items() if v is not None})
    if extensions:
        extensions = dict(extensions)
        for key in USER_DATA_KEYS:  # reprs of user data: short, always; none without capture
            if not capture_args:
                extensions.pop(key, None)
            elif extensions.get(key) is not None:
                extensions[key] = clip(extensions[key], MAX_REPR)
        ext = bounded_extensions(extensions)
        if ext:
            job["extensions"] = ext
    # A waiting task a worker has received (reserved) is its own event: it says
    # which worker holds it, after the publisher's `queued` (same state, no worker).
    held = [job["workerId"]] if state in (QUEUED, SCHEDULED) and "workerId" in job else []
    return {
        "id": event_id or producer_id("job", task_id, attempt or 1, state, *held),
        "type": JOB_STATE_CHANGE,
        "timestamp": iso(timestamp) or now_iso(),
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        JOB_FIELD: job,
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
    worker: dict[str, Any] = {
        "externalId": clip(nodename, contract.MAX_EXTERNAL_ID),
        "state": state,
    }
    optional = {
        "hostname": host_of(nodename),
        "previousState": previous_state,
        "activeJobs": active if isinstance(active, int) and active >= 0 else None,
        "concurrency": concurrency if isinstance(concurrency, int) and concurrency >= 0 else None,
        "pid": pid if isinstance(pid, int) and pid >= 0 else None,
        "queues": [clip(q, contract.MAX_QUEUE_NAME) for q in queues if q][: contract.MAX_QUEUES]
        if queues
        else None,
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
        WORKER_FIELD: worker,
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
    queue: dict[str, Any] = {
        "name": clip(name, contract.MAX_QUEUE_NAME),
        "depth": max(0, int(depth)),
    }
    if consumers is not None:
        queue["consumers"] = max(0, int(consumers))
    if extensions:
        queue["extensions"] = bounded_extensions(extensions)
    return {
        "id": random_id(),
        "type": QUEUE_SNAPSHOT,
        "timestamp": iso(timestamp) or now_iso(),
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        QUEUE_FIELD: queue,
    }


# -- a task's call, for an operator's retry ---------------------------------------

#: The message header an operator's retry (the agent) puts on the task it re-sends:
#: the original's external id; the integration reports it as `extensions.retryOf`.
RETRY_OF_HEADER: Final = "sluice_retry_of"
#: A captured call (`extensions.call`: the task's real arguments) as JSON, at most.
MAX_CALL_BYTES: Final = 16_384
#: The server's default limit of one payload's `extensions` (SLUICE_MAX_EXTENSIONS_BYTES).
SERVER_MAX_EXTENSIONS_BYTES: Final = 8_192


def _json_size(value: Any) -> int:
    # ASCII escapes: never fewer bytes than the server counts, whatever its encoder.
    return len(json.dumps(value, separators=(",", ":")).encode())


def _is_plain_json(value: Any, depth: int = 0) -> bool:
    """JSON that comes back as it went: None, bools, numbers (finite), strings, lists
    (tuples) and objects with string keys; nothing json.dumps would change or refuse."""
    if depth > 50:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return all(_is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def with_call(
    event: dict[str, Any],
    args: Any,
    kwargs: Any,
    *,
    max_call_bytes: int = MAX_CALL_BYTES,
    max_extensions_bytes: int = SERVER_MAX_EXTENSIONS_BYTES,
) -> dict[str, Any]:
    """`event` (a job event) with its task's call, for a retry by the agent:
    `extensions.call = {"args": [...], "kwargs": {...}}` when the arguments are
    JSON (no objects, no NaN) and the call fits `max_call_bytes` and the whole
    `extensions` the server's `max_extensions_bytes` (an event over it would be
    refused, and lost); else `extensions.callSkipped` = "not JSON" | "too large".
    Added after `job_event` bounded the rest: the call is whole or absent."""
    job = event[JOB_FIELD]
    ext = dict(job.get("extensions") or {})
    call: dict[str, Any] = {
        "args": list(args) if isinstance(args, (list, tuple)) else args,
        "kwargs": dict(kwargs) if isinstance(kwargs, dict) else kwargs,
    }
    if call["args"] is None:
        call["args"] = []
    if call["kwargs"] is None:
        call["kwargs"] = {}
    skipped: str | None = None
    if (
        not isinstance(call["args"], list)
        or not isinstance(call["kwargs"], dict)
        or not _is_plain_json(call)
    ):
        skipped = "not JSON"
    else:
        try:
            size = len(json.dumps(call, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError, RecursionError):
            skipped = "not JSON"
        else:
            if size > max_call_bytes or _json_size({**ext, "call": call}) > max_extensions_bytes:
                skipped = "too large"
    if skipped is None:
        ext["call"] = call
    else:
        ext["callSkipped"] = skipped
    job["extensions"] = ext
    return event
