"""Operator actions' pure parts (no Flask, no Redis): the bodies of the action
endpoints, the command each makes, its double-click digest, and the command
stream's read parameters. `sluice.store.commands` writes and reads the
commands; `sluice.web.api.actions` serves them (`docs/api.md#operator-actions`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import contract as c
from .errors import Invalid
from .schema import parse_event_id

#: Fields a bulk retry's `filter` may hold besides `state`.
FILTER_FIELDS: Final[tuple[str, ...]] = ("queue", "name", "worker", "q")


def _action(body: Mapping[str, Any], choices: tuple[str, ...]) -> str:
    action = body.get("action")
    if not isinstance(action, str) or action not in choices:
        raise Invalid(
            "action must be one of " + ", ".join(choices),
            {"action": "one of " + ", ".join(choices)},
        )
    return action


def _only(body: Mapping[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise Invalid(
            "Unknown field: " + ", ".join(unknown[:5]),
            {f"{where}{key}": "unknown field" for key in unknown[:5]},
        )


def parse_job_action(body: Mapping[str, Any]) -> dict[str, Any]:
    """`{"action": "revoke" | "terminate" | "retry", "signal"?}` -> the command's
    action fields (`signal` for terminate only, SIGTERM by default)."""
    _only(body, ("action", "signal"))
    action = _action(body, c.JOB_ACTIONS)
    signal = body.get("signal")
    if action != "terminate":
        if signal is not None:
            raise Invalid("signal is for terminate only", {"signal": "terminate only"})
        return {"action": action}
    if signal is None:
        signal = c.SIGNALS[0]
    if not isinstance(signal, str) or signal not in c.SIGNALS:
        raise Invalid(
            "signal must be one of " + ", ".join(c.SIGNALS),
            {"signal": "one of " + ", ".join(c.SIGNALS)},
        )
    return {"action": action, "signal": signal}


def parse_bulk_action(body: Mapping[str, Any]) -> dict[str, Any]:
    """`{"action": "retry", "filter": {"state": "failed" | "cancelled", "queue"?,
    "name"?, "worker"?, "q"?}}` -> `{"action": "bulk_retry", "filter": {...}}`."""
    _only(body, ("action", "filter"))
    _action(body, c.BULK_ACTIONS)
    raw = body.get("filter")
    if not isinstance(raw, dict):
        raise Invalid("filter must be an object", {"filter": "required object"})
    _only(raw, ("state", *FILTER_FIELDS), "filter.")
    state = raw.get("state")
    if not isinstance(state, str) or state not in c.BULK_RETRY_STATES:
        raise Invalid(
            "filter.state must be one of " + ", ".join(c.BULK_RETRY_STATES),
            {"filter.state": "required, one of " + ", ".join(c.BULK_RETRY_STATES)},
        )
    chosen: dict[str, str] = {"state": state}
    for name in FILTER_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= c.MAX_QUERY:
            raise Invalid(
                f"filter.{name} must be a string of 1 to {c.MAX_QUERY} characters",
                {f"filter.{name}": f"a string of 1 to {c.MAX_QUERY} characters"},
            )
        chosen[name] = value
    return {"action": c.BULK_RETRY, "filter": chosen}


def parse_worker_action(body: Mapping[str, Any]) -> dict[str, Any]:
    """`{"action": "pool_grow" | "pool_shrink" | "shutdown", "n"?: 1..100}` -> the
    command's action fields (`n` for pool actions only, 1 by default)."""
    _only(body, ("action", "n"))
    action = _action(body, c.WORKER_ACTIONS)
    n = body.get("n")
    if action == "shutdown":
        if n is not None:
            raise Invalid("n is for pool_grow and pool_shrink only", {"n": "pool actions only"})
        return {"action": action}
    if n is None:
        n = c.POOL_N_DEFAULT
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= c.POOL_N_MAX:
        raise Invalid(
            f"n must be an integer from 1 to {c.POOL_N_MAX}",
            {"n": f"an integer from 1 to {c.POOL_N_MAX}"},
        )
    return {"action": action, "n": n}


def digest(action: Mapping[str, Any], target: Mapping[str, Any]) -> str:
    """What makes two requests "the same action on the same target": the action's
    fields and the target's identity (a job's or a worker's id, whatever else
    its record says meanwhile; a bulk action's filter), as canonical JSON,
    hashed (SHA-256, hex, 32 chars)."""
    identity = {
        kind: {"id": part.get("id")} if isinstance(part, Mapping) else part
        for kind, part in target.items()
        if kind in ("job", "worker")
    } or dict(target)
    canonical = json.dumps(
        {"a": action, "t": identity}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def command(
    command_id: str, requested_at: str, action: Mapping[str, Any], target: Mapping[str, Any]
) -> dict[str, Any]:
    """The command as the stream holds it: `commandId`, `action`, `requestedAt`,
    then the target (`job`, `worker`; nothing for a bulk retry, whose `filter` is
    in `action`) and the action's own fields (`signal`, `filter`, `n`)."""
    made: dict[str, Any] = {
        "commandId": command_id,
        "action": action["action"],
        "requestedAt": requested_at,
    }
    made.update(target)
    made.update((k, v) for k, v in action.items() if k != "action")
    return made


def job_target(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job's part of a command: `{"job": {"id", "externalId", "name", "queue"}}`."""
    return {"job": {k: job.get(k) for k in ("id", "externalId", "name", "queue")}}


def worker_target(worker: Mapping[str, Any]) -> dict[str, Any]:
    """A worker's part of a command: `{"worker": {"id", "externalId"}}`."""
    return {"worker": {k: worker.get(k) for k in ("id", "externalId")}}


@dataclass(frozen=True)
class CommandsQuery:
    """`GET /api/connections/<id>/commands`'s parameters, checked."""

    #: The stream entry id to read after; None: the commands of the last
    #: `COMMAND_MAX_AGE_SECONDS`.
    after: str | None
    #: Seconds to wait for a command when there is none yet (0: answer at once).
    wait: float


def parse_commands_query(args: Mapping[str, str]) -> CommandsQuery:
    """`after` (a stream entry id) and `wait` (0 to 25 seconds, 0 by default); 400
    for anything else."""
    after = parse_event_id(args.get("after"), "after")
    raw_wait = args.get("wait")
    wait = 0.0
    if raw_wait is not None:
        try:
            wait = float(raw_wait) if len(raw_wait) <= 16 else math.nan
        except ValueError:
            wait = math.nan
        if not 0 <= wait <= c.COMMAND_WAIT_MAX_SECONDS:  # NaN fails too
            raise Invalid(
                f"wait must be a number of seconds from 0 to {c.COMMAND_WAIT_MAX_SECONDS}",
                {"wait": f"0 to {c.COMMAND_WAIT_MAX_SECONDS}"},
            )
    return CommandsQuery(after, wait)


def start_id(now_ms: int) -> str:
    """Where a read without `after` starts: just before the oldest command still
    young enough to be carried out."""
    return f"{max(0, now_ms - c.COMMAND_MAX_AGE_SECONDS * 1000)}-0"
