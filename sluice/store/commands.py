"""The command stream: operator actions the server issues and the connection's
agent reads (`Keys.commands`), with the double-click guard (`Keys.command_once`).

Every key is under the connection's hash tag, so the issuing script stays in
one Redis Cluster slot. The agent reads through `GET /api/connections/<id>/commands`
(never Redis itself): `read` polls with a plain `XREAD` every
`POLL_STEP_SECONDS`, so a waiting agent holds a pooled connection for one
round trip at a time, never for the whole wait; under gevent the wait yields
to other greenlets (`time.sleep` is monkey-patched).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .. import contract as c
from ..strictjson import dumps
from .client import Redis, script, text
from .keys import Keys

#: Issue a command once: the guard (`SET NX EX`) and the entry (`XADD MAXLEN ~`)
#: in one atomic step; the stream expires `ARGV[6]` seconds after its last
#: command (commands older than `COMMAND_MAX_AGE_SECONDS` are never carried out),
#: so an idle connection holds none. KEYS: guard, stream, pending (of this
#: command id). ARGV: command id, guard seconds, stream length, command JSON,
#: digest, stream and pending seconds. The pending mark holds the digest and
#: the entry id, for `release`.
#: Returns {1, command id, entry id} when appended, {0, the guard's command id}
#: when the same action on the same target is still pending.
_ISSUE_LUA = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'c', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. id, 'EX', ARGV[6])
return {1, ARGV[1], id}
"""
#: A command's result arrived: free its guard (only if the guard still holds
#: that command) and take its entry off the stream, so that an agent that
#: starts again (and reads the last minute's commands) never carries it out a
#: second time. KEYS: pending, guard, stream. ARGV: command id, entry id.
_RELEASE_LUA = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[1])
redis.call('XDEL', KEYS[3], ARGV[2])
return 1
"""
#: How long a command's entry and pending mark live: twice the age past which
#: the agent no longer carries a command out.
KEEP_SECONDS = 2 * c.COMMAND_MAX_AGE_SECONDS

#: Seconds between two reads while a poll waits: each read holds a pooled
#: connection for one round trip, never while waiting (a blocking XREAD would
#: hold one for the whole wait, and enough waiting agents would take the pool
#: from every tenant).
POLL_STEP_SECONDS = 0.5


def issue(r: Redis, connection_id: str, digest: str, command: dict[str, Any]) -> tuple[str, bool]:
    """Append `command` to the connection's command stream unless the same action
    on the same target (`digest`) is pending: (command id, whether it was appended;
    when not, the id is the pending command's)."""
    command_id = command["commandId"]
    reply = script(r, _ISSUE_LUA)(
        keys=[
            Keys.command_once(connection_id, digest),
            Keys.commands(connection_id),
            Keys.command_pending(connection_id, command_id),
        ],
        args=[
            command_id,
            c.COMMAND_DEDUPE_SECONDS,
            c.MAX_COMMAND_STREAM,
            dumps(command),
            digest,
            KEEP_SECONDS,
        ],
    )
    return text(reply[1]), int(reply[0]) == 1


def release(r: Redis, connection_id: str, command_id: str) -> None:
    """A command's result arrived: the same action on the same target makes a new
    command from now on (not the finished one's id)."""
    if len(command_id) > c.MAX_COMMAND_ID:
        return
    pending = Keys.command_pending(connection_id, command_id)
    mark = r.get(pending)
    if mark is None:
        return
    digest, _, entry_id = text(mark).partition(" ")
    script(r, _RELEASE_LUA)(
        keys=[pending, Keys.command_once(connection_id, digest), Keys.commands(connection_id)],
        args=[command_id, entry_id or "0-0"],
    )


def _entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for entry_id, fields in reply:
        raw = fields.get(c.COMMAND_FIELD.encode())
        if raw is not None:
            found.append((text(entry_id), json.loads(raw)))
    return found


def _only_stream(reply: Any) -> Any:
    """The entries of a one-key `XREAD` reply: [[key, entries]] (RESP2) or
    {key: [entries]} (RESP3)."""
    if isinstance(reply, dict):
        return next(iter(reply.values()))[0]
    return reply[0][1]


def read(
    r: Redis,
    connection_id: str,
    after: str,
    wait_seconds: float,
    stop: Callable[[], bool] = lambda: False,
) -> list[tuple[str, dict[str, Any]]]:
    """The commands after entry id `after` (at most `COMMAND_READ_COUNT`), as
    (entry id, command); waits up to `wait_seconds` for one when there is none,
    or until `stop()` says so between steps (the process is draining)."""
    key = Keys.commands(connection_id)
    deadline = time.monotonic() + wait_seconds
    while True:
        reply = r.xread({key: after}, count=c.COMMAND_READ_COUNT)
        if reply:
            found = _entries(_only_stream(reply))
            if found:
                return found
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop():
            return []
        time.sleep(min(remaining, POLL_STEP_SECONDS))  # a greenlet's sleep under gevent


def purge(r: Redis, connection_id: str) -> None:
    """Delete a connection's command stream, guards and pending marks (they also
    expire on their own within `COMMAND_DEDUPE_SECONDS`)."""
    r.delete(Keys.commands(connection_id))
    for pattern in (
        Keys.command_once(connection_id, "*"),
        Keys.command_pending(connection_id, "*"),
    ):
        for key in r.scan_iter(match=pattern, count=500):
            r.delete(key)
