"""What the job metrics keep in Redis: the label values admitted per connection
(shared by every process and instance), the connections that ingested lately,
and the reads a scrape makes of their latest worker and queue snapshots.

The pure parts (caps, runtime, gauges) are `sluice.jobmetrics`; the counting
is `sluice.metrics`'s. Every function here raises the store's errors
(`client.STORE_ERRORS`); the callers decide what a failure costs.
"""

from __future__ import annotations

import json
from typing import Any

from ..jobmetrics import NAME, QUEUE, Admission
from .client import Redis, script, text
from .keys import Keys

#: Admit label values, for good: a value already admitted stays; a new one is
#: added while the set holds fewer than the cap. Both kinds in one call (both
#: keys carry the connection's hash tag: one slot).
_ADMIT_LUA = r"""#!lua
-- KEYS: the admitted queues, the admitted names. ARGV: the cap, how many queue
-- values follow, the queue values, then the name values. Returns per kind a
-- string of '0'/'1' (admitted or not, in the order given) and, when the set
-- is full, its members (else an empty list).
local cap, nq = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for k = 1, 2 do
  local key = KEYS[k]
  local first, last = 3, 2 + nq
  if k == 2 then first, last = 3 + nq, #ARGV end
  local flags, size = {}, redis.call("SCARD", key)
  for i = first, last do
    if redis.call("SISMEMBER", key, ARGV[i]) == 1 then
      flags[#flags + 1] = "1"
    elseif size < cap then
      redis.call("SADD", key, ARGV[i])
      size = size + 1
      flags[#flags + 1] = "1"
    else
      flags[#flags + 1] = "0"
    end
  end
  out[#out + 1] = table.concat(flags)
  if size >= cap then out[#out + 1] = redis.call("SMEMBERS", key) else out[#out + 1] = {} end
end
return out
"""

#: Connections whose snapshots a scrape reads per pipeline.
READ_CHUNK = 100


def admit_labels(
    r: Redis, connection_id: str, queues: list[str], names: list[str], cap: int
) -> dict[str, Admission]:
    """Ask (and record) which of these queue and task names get a label of their
    own in the connection's series; `cap` per kind."""
    reply = script(r, _ADMIT_LUA)(
        keys=[Keys.metric_labels(connection_id, QUEUE), Keys.metric_labels(connection_id, NAME)],
        args=[cap, len(queues), *queues, *names],
    )
    out = {}
    for kind, values, flags, members in (
        (QUEUE, queues, reply[0], reply[1]),
        (NAME, names, reply[2], reply[3]),
    ):
        admitted = [v for v, flag in zip(values, text(flags), strict=True) if flag == "1"]
        out[kind] = Admission(admitted, [text(m) for m in members] if members else None)
    return out


def note_connection(r: Redis, connection_id: str, now_ms: int, keep_ms: int) -> None:
    """Record that the connection ingested now, and forget connections idle for
    longer than `keep_ms` (one key, one round trip)."""
    key = Keys.metrics_connections()
    pipe = r.pipeline(transaction=False)
    pipe.zadd(key, {connection_id: now_ms})
    pipe.zremrangebyscore(key, "-inf", now_ms - keep_ms)
    pipe.execute()


def forget_connection(pipe: Any, connection_id: str) -> None:
    """Queue on `pipe` the removal of a deleted connection's metrics keys."""
    pipe.zrem(Keys.metrics_connections(), connection_id)
    pipe.delete(Keys.metric_labels(connection_id, QUEUE), Keys.metric_labels(connection_id, NAME))


def _decoded(values: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for value in values:
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def recent_snapshots(
    r: Redis, now_ms: int, keep_ms: int, limit: int
) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], set[str]]]:
    """The most recently active connections (at most `limit`, active within
    `keep_ms`), each with its latest worker snapshots, queue snapshots and
    admitted queue labels: one read of the registry, then pipelined reads of
    `READ_CHUNK` connections at a time."""
    ids = [
        text(member)
        for member in r.zrevrangebyscore(
            Keys.metrics_connections(), "+inf", now_ms - keep_ms, start=0, num=limit
        )
    ]
    out = []
    for first in range(0, len(ids), READ_CHUNK):
        chunk = ids[first : first + READ_CHUNK]
        pipe = r.pipeline(transaction=False)
        for connection_id in chunk:
            pipe.hvals(Keys.index(connection_id, Keys.WORKERS))
            pipe.hvals(Keys.index(connection_id, Keys.QUEUES))
            pipe.smembers(Keys.metric_labels(connection_id, QUEUE))
        replies = pipe.execute()
        for i, connection_id in enumerate(chunk):
            workers, queues, admitted = replies[3 * i : 3 * i + 3]
            out.append(
                (connection_id, _decoded(workers), _decoded(queues), {text(v) for v in admitted})
            )
    return out
