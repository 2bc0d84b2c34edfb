"""The command stream: operator actions the server issues and the connection's
agent reads (`Keys.commands`), with the double-click guard (`Keys.command_once`).

Every key is under the connection's hash tag, so the issuing script stays in
one Redis Cluster slot. The agent reads through `GET /api/connections/<id>/commands`
(never Redis itself): `read` waits with `XREAD BLOCK` in steps shorter than the
client's socket timeout, so a pooled connection is held for one step at a
time (a few seconds), never for the whole wait; under gevent the wait yields
to other greenlets (redis-py's sockets are monkey-patched).
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
#: in one atomic step. KEYS: guard, stream, pending (of this command id).
#: ARGV: command id, guard seconds, stream length, command JSON, digest.
#: Returns {1, command id, entry id} when appended, {0, the guard's command id}
#: when the same action on the same target is still pending.
_ISSUE_LUA = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'c', ARGV[4])
return {1, ARGV[1], id}
"""

#: Free a command's guard when its result arrives (only if the guard still holds
#: that command). KEYS: pending, guard. ARGV: command id.
_RELEASE_LUA = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[1])
return 1
"""

#: Seconds of one `XREAD BLOCK` step: below the client's socket timeout (5 s).
BLOCK_STEP_SECONDS = 4.0


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
        ],
    )
    return text(reply[1]), int(reply[0]) == 1


def release(r: Redis, connection_id: str, command_id: str) -> None:
    """A command's result arrived: the same action on the same target makes a new
    command from now on (not the finished one's id)."""
    if len(command_id) > c.MAX_COMMAND_ID:
        return
    pending = Keys.command_pending(connection_id, command_id)
    digest = r.get(pending)
    if digest is None:
        return
    script(r, _RELEASE_LUA)(
        keys=[pending, Keys.command_once(connection_id, text(digest))], args=[command_id]
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
        remaining = 0.0 if stop() else deadline - time.monotonic()
        block_ms = int(min(remaining, BLOCK_STEP_SECONDS) * 1000)
        if block_ms <= 0:
            # No wait (or none left): one plain read. (`block=0` would wait forever.)
            reply = r.xread({key: after}, count=c.COMMAND_READ_COUNT)
        else:
            reply = r.xread({key: after}, count=c.COMMAND_READ_COUNT, block=block_ms)
        if reply:
            found = _entries(_only_stream(reply))
            if found:
                return found
        if block_ms <= 0:
            return []


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
