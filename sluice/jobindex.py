"""The job index's pure parts (no Redis): what the append script indexes for
each accepted event, and the parameters of a jobs query.

The index itself lives in Redis beside the stream and is written by the same
script, in the same atomic step (`sluice.store.events`); it is read by
`sluice.store.jobs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import contract as c
from .errors import Invalid
from .schema import stable_id
from .strictjson import dumps

#: A str as a JSON string, as `dumps` writes it (not ASCII-escaped).
_string = json.encoder.encode_basestring

#: What the script gets per event besides (producer id, event name, data):
#: kind ("j" job, "w" worker, "q" queue), then the kind's fields, "" when absent.
INDEX_STRIDE: Final = 15
JOB, WORKER, QUEUE = "j", "w", "q"
#: The index fields of an event the index ignores.
NOT_INDEXED: Final = ("",) * INDEX_STRIDE


def _json_or_empty(value: Any) -> str:
    return "" if value is None else dumps(value)


#: Where a state comes in one attempt of a job's life: waiting, running, done.
#: At the same millisecond and attempt, an event of an earlier step is late.
LIFE_STEP: Final[Mapping[str, int]] = {
    "unknown": 0,
    "scheduled": 0,
    "queued": 0,
    "active": 1,
    "retrying": 2,
    "completed": 2,
    "failed": 2,
    "cancelled": 2,
}


def event_age(data: Mapping[str, Any]) -> str:
    """How new a job event is, as text whose byte order is the index's order of
    one job's events: its timestamp (normalised ISO 8601, so text order is time
    order), then its attempt (1 when absent), then its step in the attempt
    (`LIFE_STEP`). Several processes report one job (a Celery worker's main
    process its `received`, a pool process its `started` and `succeeded`, often
    in the same millisecond); this orders them whatever order they arrive in."""
    attempt = data.get("attempt") or 1
    return f"{data['timestamp']} {attempt:016d}{LIFE_STEP.get(data['state'], 0)}"


def _timeline_entry(data: Mapping[str, Any]) -> str:
    """The job's timeline entry as JSON without its closing brace: state,
    timestamp, then workerId, attempt and error (cut to `MAX_TIMELINE_ERROR`)
    when set. The same text as `dumps` of that object, written directly (it is
    built for every job event ingested)."""
    # State and timestamp are normalised (a contract state, an ISO time): no escaping.
    text = '{"state":"' + data["state"] + '","timestamp":"' + data["timestamp"] + '"'
    worker, attempt, error = data.get("workerId"), data.get("attempt"), data.get("error")
    if worker is not None:
        text += ',"workerId":' + _string(worker)
    if attempt is not None:
        text += ',"attempt":' + dumps(attempt)
    if error:
        text += ',"error":' + _string(error[: c.MAX_TIMELINE_ERROR])
    return text


def index_fields(event: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The index's view of one normalised event, `INDEX_STRIDE` strings:

    - a job: kind, job id, state, queue, name, worker id, external id, its
      timeline entry as JSON without the closing brace (the script adds the
      previous state it knows), the previous state the producer sent, the
      event's age (`event_age`), and the arguments, keyword arguments and
      result (JSON, from `extensions`) and the traceback, each "" when not sent; and the job as lists show it (its
      data without `stacktrace`, which only the detail shows), "" when that is
      the data itself;
    - a worker: kind, worker id; a queue: kind, queue name.
    """
    if event == c.JOB_STATE_CHANGE:
        extensions = data.get("extensions") or {}
        return (
            JOB,
            data["id"],
            data["state"],
            data.get("queue") or "",
            data["name"],
            data.get("workerId") or "",
            data["externalId"],
            _timeline_entry(data),
            data.get("previousState") or "",
            event_age(data),
            _json_or_empty(extensions.get("args")),
            _json_or_empty(extensions.get("kwargs")),
            _json_or_empty(extensions.get("result")),
            data.get("stacktrace") or "",
            dumps({k: v for k, v in data.items() if k != "stacktrace"})
            if "stacktrace" in data
            else "",
        )
    if event in (c.WORKER_HEARTBEAT, c.WORKER_STATE_CHANGE):
        return (WORKER, data["id"], *NOT_INDEXED[2:])
    if event == c.QUEUE_SNAPSHOT:
        return (QUEUE, data["name"], *NOT_INDEXED[2:])
    return NOT_INDEXED


# -- queries ---------------------------------------------------------------------


@dataclass(frozen=True)
class JobQuery:
    """`GET /api/connections/<id>/jobs`'s parameters, checked."""

    state: str | None = None
    queue: str | None = None
    name: str | None = None
    worker: str | None = None
    q: str | None = None
    limit: int = c.JOBS_PAGE_DEFAULT
    #: Jobs updated before this position (exclusive); None: from the newest.
    cursor: int | None = None


def _text(args: Mapping[str, str], key: str, details: dict[str, str]) -> str | None:
    value = args.get(key)
    if value is None or value == "":
        return None
    if len(value) > c.MAX_QUERY or not _encodable(value):
        details[key] = f"at most {c.MAX_QUERY} characters of valid Unicode"
        return None
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_job_query(args: Mapping[str, str]) -> JobQuery:
    """The query's parameters, or `Invalid` naming each bad one."""
    details: dict[str, str] = {}
    state = _text(args, "state", details)
    if state is not None and state not in c.JOB_STATES:
        details["state"] = "one of " + ", ".join(c.JOB_STATES)
    texts = {key: _text(args, key, details) for key in ("queue", "name", "worker", "q")}
    limit = c.JOBS_PAGE_DEFAULT
    raw_limit = args.get("limit")
    if raw_limit:
        ok = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4
        if ok and 1 <= int(raw_limit) <= c.JOBS_PAGE_MAX:
            limit = int(raw_limit)
        else:
            details["limit"] = f"an integer from 1 to {c.JOBS_PAGE_MAX}"
    cursor = parse_cursor(args.get("cursor"), details)
    if details:
        raise Invalid("Invalid jobs query", details)
    return JobQuery(state=state, limit=limit, cursor=cursor, **texts)


def parse_cursor(raw: str | None, details: dict[str, str]) -> int | None:
    """A `nextCursor` given back: a position in the index (digits, ≤ 2^53)."""
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 16 and int(raw) <= c.MAX_INTEGER:
        return int(raw)
    details["cursor"] = "a nextCursor from a previous page"
    return None


def job_refs(connection_id: str, ref: str) -> tuple[str, str]:
    """The job ids a path's `<job id or external id>` may name: itself (a job
    id), then the id of the job whose external id it is."""
    if not ref or len(ref) > c.MAX_EXTERNAL_ID or not _encodable(ref):
        raise Invalid("Invalid job id", {"job": f"1 to {c.MAX_EXTERNAL_ID} characters"})
    return (ref, stable_id(connection_id, "job", ref))
