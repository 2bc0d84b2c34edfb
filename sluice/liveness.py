"""Whether a worker is online: the one rule, decided on read. No I/O.

A worker is online unless its latest snapshot (`worker:heartbeat` or
`worker:state_change` data, as the job index keeps it) says `offline`, or that
snapshot's `timestamp` is more than `SLUICE_WORKER_EXPIRY_SECONDS` old: its
heartbeats stopped (a SIGKILL, a lost host, a producer that died with it) and
nobody said goodbye. Nothing is written when a worker expires; every reader
(the workers API, `sluice_workers_online`, the dashboard, which applies the same
rule with the same expiry from `GET /api/config`) decides it from the snapshot
and the time now. A new heartbeat brings the worker back.

The timestamp is the producer's clock (the event's `timestamp`), compared with
the reader's: producers' clocks must agree with the server's to well within the
expiry (NTP does). A timestamp in the future counts as now.

See docs/api.md, "Worker liveness".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

#: A worker's state that means it is gone.
OFFLINE = "offline"
#: `offlineReason` of a worker whose heartbeats stopped.
HEARTBEAT_EXPIRED = "heartbeat_expired"


def timestamp_ms(value: Any) -> int | None:
    """Milliseconds since the epoch of a stored timestamp (`2026-02-27T10:30:00.123Z`);
    None when it is not one."""
    if not isinstance(value, str) or not value.endswith("Z"):
        return None
    try:
        return int(datetime.fromisoformat(value[:-1] + "+00:00").timestamp() * 1000)
    except ValueError:
        return None


def silent_ms(snapshot: dict[str, Any], now_ms: int) -> int | None:
    """How long (ms, >= 0) the worker has been silent: now - its snapshot's
    `timestamp`; None when the snapshot has no timestamp."""
    seen = timestamp_ms(snapshot.get("timestamp"))
    if seen is None:
        return None
    return max(0, now_ms - seen)


def expired(snapshot: dict[str, Any], now_ms: int, expiry_seconds: float) -> bool:
    """Whether a worker that did not say `offline` has been silent for longer than
    the expiry."""
    if snapshot.get("state") == OFFLINE:
        return False
    silent = silent_ms(snapshot, now_ms)
    return silent is not None and silent > expiry_seconds * 1000


def worker_online(snapshot: dict[str, Any], now_ms: int, expiry_seconds: float) -> bool:
    """Whether a worker counts as online (see the module's docstring)."""
    return snapshot.get("state") != OFFLINE and not expired(snapshot, now_ms, expiry_seconds)


def effective(snapshot: dict[str, Any], now_ms: int, expiry_seconds: float) -> dict[str, Any]:
    """A worker snapshot as the workers API answers it: always with `expired`;
    an expired one with `state: "offline"`, `reportedState` (the state it last
    said), `offlineReason: "heartbeat_expired"` and `silentSeconds` (whole
    seconds since its last event). `activeJobs` stays as last reported: the jobs
    it held when it went silent (now lost)."""
    out = dict(snapshot)
    if not expired(snapshot, now_ms, expiry_seconds):
        out["expired"] = False
        return out
    out["reportedState"] = snapshot.get("state")
    out["state"] = OFFLINE
    out["expired"] = True
    out["offlineReason"] = HEARTBEAT_EXPIRED
    out["silentSeconds"] = (silent_ms(snapshot, now_ms) or 0) // 1000
    return out


# -- lost jobs -----------------------------------------------------------------------

#: The state of a job a worker runs.
ACTIVE = "active"
#: The states of a job waiting to run; with a `workerId`, a worker holds it (reserved).
WAITING = ("queued", "scheduled")


def held_by_worker(job: dict[str, Any]) -> str | None:
    """The `workerId` of the worker that holds a job, when one does: the job is
    `active` on it, or `queued`/`scheduled` with a `workerId` (received,
    prefetched: reserved by that worker, Celery's `received`); else None."""
    worker = job.get("workerId")
    if not isinstance(worker, str) or not worker:
        return None
    state = job.get("state")
    return worker if state == ACTIVE or state in WAITING else None


def lost(
    job: dict[str, Any], worker: dict[str, Any] | None, now_ms: int, expiry_seconds: float
) -> bool:
    """Whether a job is lost: the worker that holds it (`held_by_worker`) is
    offline, said or expired, per its latest snapshot `worker`. A worker never
    seen (None) does not make a job lost: nothing is known of it."""
    return (
        held_by_worker(job) is not None
        and worker is not None
        and not worker_online(worker, now_ms, expiry_seconds)
    )
