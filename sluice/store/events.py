"""A connection's event stream in Redis: the atomic append, the closing entry,
and the reads the fan-out makes (`RedisEventLog`).

A Redis Stream entry holds two fields (`contract.ENTRY_EVENT`, the SSE event
name, and `contract.ENTRY_DATA`, the data JSON exactly as clients see it), so
a frame is built by concatenation on the way out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import msgpack
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from ..config import Settings
from ..contract import CLOSED_EVENT, ENTRY_DATA, ENTRY_EVENT
from ..errors import StoreRefused, StoreUnavailable
from ..jobindex import JOB, NOT_INDEXED
from ..strictjson import dumps
from .client import STORE_ERRORS, Redis, is_cluster, script, script_slot
from .jobs import INDEX_LUA, index_args
from .keys import Keys
from .notifications import ClusterNotifications, NodeNotifications

#: One stored entry as Redis returns it: (entry id, {field: value}).
Entry = tuple[bytes, dict[bytes, bytes]]

_APPEND_LUA = """#!lua
-- One batch, all or nothing. The shebang (no flags) makes Redis refuse the
-- whole script before it runs when it is out of memory.
-- KEYS: the stream, the de-duplication window (zset: producer id -> ms), the
-- stream's meta hash (bytes held). ARGV: ttl ms, max entries, max bytes, max
-- ids in the window, the notification channel, the job index's parameters
-- (key prefix, retention ms, retention count, timeline length, snapshots
-- kept, bytes, timeline bytes), how many job events the batch holds, and the
-- events: one MessagePack array of arrays (producer id, event, data, then the
-- index's fields, `jobindex.index_fields`; one argument rather than one per
-- field, which would cost the client more to send than the index costs
-- Redis). Each appended event is also indexed (the job
-- index, see `store.jobs`). A batch that appended anything publishes the
-- stream's key on the channel (sharded pub/sub: the channel shares the
-- stream's slot). Returns {accepted, duplicates, the 1-based positions of the
-- duplicates in the batch} (a list only duplicates add to: nothing per fresh event).
local stream, seen, meta = KEYS[1], KEYS[2], KEYS[3]
local ttl, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2])
local maxbytes, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local channel = ARGV[5]
local P, keep_ms, keep_max = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local timeline_max, snapshots_max = tonumber(ARGV[9]), tonumber(ARGV[10])
local max_bytes, timeline_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
local touched = {}
local function size(id, event, data)  -- what an entry holds
  return #id + #(event or "") + #(data or "")
end
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_text = tostring(now)  -- a number argument is formatted on every call
$INDEX_LUA
local bytes = 0
if redis.call("EXISTS", stream) == 1 then
  local held = redis.call("HGET", meta, "bytes")
  if held then
    bytes = tonumber(held)
  else
    -- A stream without its count (written before byte budgets, or the count
    -- was lost): count it once, a page at a time.
    local start = "-"
    repeat
      local page = redis.call("XRANGE", stream, start, "+", "COUNT", 1000)
      for _, entry in ipairs(page) do
        bytes = bytes + size(entry[1], entry[2][2], entry[2][4])
      end
      if #page > 0 then start = "(" .. page[#page][1] end
    until #page < 1000
  end
end
local accepted, duplicates, first, remembered, indexed = 0, 0, nil, false, 0
local repeated = {}
local events = cmsgpack.unpack(ARGV[14])
-- The producer ids already seen: one ZMSCORE for the batch; the fresh ones
-- are remembered with one ZADD after it (`new_ids`).
local seen_at, ids, new_ids = {}, {}, {}
for _, ev in ipairs(events) do
  if ev[1] ~= "" then ids[#ids + 1] = ev[1] end
end
local scores = bulk("ZMSCORE", seen, ids)
for j, id in ipairs(ids) do
  if scores[j] then seen_at[id] = tonumber(scores[j]) end
end
prefetch(events)
for position, ev in ipairs(events) do
  local producer_id = ev[1]
  local fresh = true
  if producer_id ~= "" then
    local at = seen_at[producer_id]
    if at and at > now - ttl then
      fresh = false
    else
      seen_at[producer_id] = now
      new_ids[#new_ids + 1] = now_text
      new_ids[#new_ids + 1] = producer_id
      remembered = true
    end
  end
  if fresh then
    local id = redis.call("XADD", stream, "*", "$ENTRY_EVENT", ev[2], "$ENTRY_DATA", ev[3])
    first = first or id
    bytes = bytes + size(id, ev[2], ev[3])
    accepted = accepted + 1
    if index_event(ev) then indexed = indexed + 1 end
  else
    duplicates = duplicates + 1
    repeated[duplicates] = position
  end
end
bulk("ZADD", seen, new_ids)
save_records()
if accepted > 0 then
  -- Trim the oldest entries past either bound, never this batch's own.
  local excess = redis.call("XLEN", stream) - maxlen
  while excess > 0 or bytes > maxbytes do
    local old = redis.call("XRANGE", stream, "-", "+", "COUNT", math.max(math.min(excess, 1000), 64))
    local last = nil
    for _, entry in ipairs(old) do
      if entry[1] == first or (excess <= 0 and bytes <= maxbytes) then break end
      bytes = bytes - size(entry[1], entry[2][2], entry[2][4])
      excess = excess - 1
      last = entry[1]
    end
    if last == nil then break end
    local ms, seq = string.match(last, "^(%d+)-(%d+)$")
    if #seq < 14 then
      redis.call("XTRIM", stream, "MINID", "=", ms .. "-" .. tostring(tonumber(seq) + 1))
    else
      for _, entry in ipairs(old) do
        redis.call("XDEL", stream, entry[1])
        if entry[1] == last then break end
      end
    end
  end
  redis.call("HSET", meta, "bytes", math.max(bytes, 0))
  -- A deleted connection's stream expires: its count goes with it.
  local pttl = redis.call("PTTL", stream)
  if pttl > 0 then redis.call("PEXPIRE", meta, pttl) end
  redis.call("SPUBLISH", channel, stream)
  flush_index()
  enforce_retention(2 * indexed + 10)
  save_bytes()
  for key in pairs(touched) do redis.call("PEXPIRE", key, keep_ms) end
end
if remembered then
  redis.call("ZREMRANGEBYSCORE", seen, "-inf", now - ttl)
  local size = redis.call("ZCARD", seen)
  if size > window then
    redis.call("ZREMRANGEBYRANK", seen, 0, size - window - 1)
  end
  redis.call("PEXPIRE", seen, ttl)
end
return {accepted, duplicates, repeated}
"""

APPEND_SCRIPT = (
    _APPEND_LUA.replace("$INDEX_LUA", INDEX_LUA)
    .replace("$ENTRY_EVENT", ENTRY_EVENT)
    .replace("$ENTRY_DATA", ENTRY_DATA)
)

#: Seconds a deleted connection's stream is kept, so every reader sees its closing entry.
CLOSED_STREAM_TTL = 60


def entry_fields(event: str, data_json: str) -> dict[str, str]:
    """The Redis Stream entry for one event."""
    return {ENTRY_EVENT: event, ENTRY_DATA: data_json}


#: The index fields that are empty for most events (details, listed data).
_OFTEN_EMPTY = ("",) * 5


def _trimmed(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The index fields without the last five when they are all empty (the
    script reads them as empty): less for Redis to unpack."""
    return fields[:-5] if fields[-5:] == _OFTEN_EMPTY else fields


def append_events(
    r: Redis,
    connection_id: str,
    events: list[tuple[str | None, str, str]] | list[tuple[str | None, str, str, tuple[str, ...]]],
    settings: Settings,
) -> tuple[int, int]:
    """Append (producer id, event name, data JSON[, index fields]) atomically, and
    index what was appended (events without index fields are not indexed);
    returns (accepted, duplicates)."""
    accepted, duplicates, _ = append_events_detailed(r, connection_id, events, settings)
    return accepted, duplicates


def append_events_detailed(
    r: Redis,
    connection_id: str,
    events: list[tuple[str | None, str, str]] | list[tuple[str | None, str, str, tuple[str, ...]]],
    settings: Settings,
) -> tuple[int, int, frozenset[int]]:
    """`append_events`, also saying which events were not appended: returns
    (accepted, duplicates, the 0-based indexes of the duplicates in `events`)."""
    args: list[Any] = [
        settings.dedupe_ttl_seconds * 1000,
        settings.stream_maxlen,
        settings.stream_max_bytes,
        settings.dedupe_max,
        Keys.notify(connection_id),
        *index_args(connection_id, settings),
    ]
    packed = [
        (producer_id or "", name, data, *_trimmed(indexed[0] if indexed else NOT_INDEXED))
        for producer_id, name, data, *indexed in events
    ]
    args.append(sum(1 for event in packed if event[3] == JOB))
    args.append(msgpack.packb(packed))
    append = script(r, APPEND_SCRIPT)
    keys = [Keys.stream(connection_id), Keys.seen(connection_id), Keys.stream_meta(connection_id)]
    with script_slot(r, keys[0]):
        accepted, duplicates, repeated = append(keys=keys, args=args)
    return int(accepted), int(duplicates), frozenset(int(i) - 1 for i in repeated)


def close_stream(pipe: Any, connection_id: str) -> None:
    """Queue on `pipe` the end of a connection's stream: a closing entry every open
    stream of it sees (on every server), then the history expires."""
    stream = Keys.stream(connection_id)
    pipe.xadd(stream, entry_fields(CLOSED_EVENT, dumps({"reason": "connection_deleted"})))
    pipe.spublish(Keys.notify(connection_id), stream)
    pipe.expire(stream, CLOSED_STREAM_TTL)
    pipe.delete(Keys.seen(connection_id), Keys.stream_meta(connection_id))


#: A cluster moving slots or failing over: the store is unavailable for a moment,
#: no key is at fault.
_CLUSTER_IN_FLUX = (
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
)


_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def _refresh_slots(cluster: RedisCluster) -> None:
    try:
        cluster.nodes_manager.initialize()
    except STORE_ERRORS:
        pass  # still in flux: the next failure tries again


@contextmanager
def _as_domain_errors(refresh: RedisCluster | None = None) -> Iterator[None]:
    """redis-py's errors as the domain's, for the fan-out (which knows no Redis).
    With `refresh`, a failure other than a refused key first re-reads that
    cluster's slot map."""
    try:
        yield
    except (*_CLUSTER_IN_FLUX, *_UNREACHABLE) as exc:
        if refresh is not None:
            _refresh_slots(refresh)
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except redis.ResponseError as exc:
        raise StoreRefused(str(exc)) from exc
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


class RedisEventLog:
    """What the fan-out reads, on Redis: stream bounds, history pages, reads of the
    streams that changed, and the notifications that say which changed (one
    sharded pub/sub connection per process, subscribed to the channel of every
    watched stream). Raises `StoreRefused` (one key refused) or
    `StoreUnavailable`, never redis-py's errors."""

    def __init__(self, client: Redis) -> None:
        self.redis = client
        self.cluster = is_cluster(client)
        self._notifications: NodeNotifications | ClusterNotifications = (
            ClusterNotifications(cast(RedisCluster, client))
            if self.cluster
            else NodeNotifications(client)
        )

    @staticmethod
    def stream_key(connection_id: str) -> bytes:
        return Keys.stream(connection_id).encode()

    def bounds(self, key: bytes) -> tuple[bytes | None, bytes | None]:
        """(first, last) entry ids of a stream; (None, None) when it is empty."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        with _as_domain_errors():
            first, last = pipe.execute()
        return (first[0][0] if first else None), (last[0][0] if last else None)

    def range(self, key: bytes, after: bytes, until: bytes | None, count: int) -> list[Entry]:
        """Up to `count` entries after `after` (exclusive) up to `until` (inclusive)."""
        end = until if until is not None else b"+"
        with _as_domain_errors():
            entries = self.redis.xrange(key, min=b"(" + after, max=end, count=count)
        return cast(list[Entry], entries)

    def read(self, cursors: dict[bytes, bytes], count: int) -> list[tuple[bytes, list[Entry]]]:
        """Entries after each cursor (one XREAD, not blocking; on a cluster one per
        slot, pipelined to each node). Raises `StoreRefused` when Redis refuses
        the read because of some key."""
        if self.cluster:
            return self._read_by_slot(cursors, count)
        streams: dict[Any, Any] = dict(cursors)
        with _as_domain_errors():
            reply = self.redis.xread(streams, count=count)
        return cast(list[tuple[bytes, list[Entry]]], reply or [])

    def _read_by_slot(
        self, cursors: dict[bytes, bytes], count: int
    ) -> list[tuple[bytes, list[Entry]]]:
        """On a cluster: the streams grouped by slot, each slot's XREAD sent to the
        node that owns it (one pipeline per node). Sent to the node directly:
        redis-py's cluster client would ask Redis for the keys of every XREAD
        (`COMMAND GETKEYS`: its keys follow a keyword), a round trip each. After
        any failure the client's slot map is refreshed, so the next read goes
        where the slots now are."""
        cluster = cast(RedisCluster, self.redis)
        nodes: dict[str, tuple[Any, dict[int, dict[Any, Any]]]] = {}
        for key, cursor in cursors.items():
            slot = key_slot(key)
            node = cluster.nodes_manager.get_node_from_slot(slot)
            nodes.setdefault(node.name, (node, defaultdict(dict)))[1][slot][key] = cursor
        out: list[tuple[bytes, list[Entry]]] = []
        with _as_domain_errors(refresh=cluster):
            for node, slots in nodes.values():
                pipe = node.redis_connection.pipeline(transaction=False)
                for streams in slots.values():
                    pipe.xread(streams, count=count)
                for reply in pipe.execute():
                    out.extend(cast(list[Any], reply or []))
        return out

    def refused(self, cursors: dict[bytes, bytes]) -> list[bytes]:
        """The keys Redis refuses to read, each tried alone."""
        keys = list(cursors)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xread({key: cursors[key]}, count=1)
        with _as_domain_errors():
            results = pipe.execute(raise_on_error=False)
            for result in results:
                if isinstance(result, _CLUSTER_IN_FLUX):
                    raise result  # not the key's fault: the store is unavailable
        return [k for k, result in zip(keys, results, strict=True) if isinstance(result, Exception)]

    # -- notifications ------------------------------------------------------------

    def listen(self, connection_id: str) -> None:
        """Be notified when the connection's stream gets entries (only recorded
        here: `notifications` sends it)."""
        self._notifications.listen(
            Keys.notify(connection_id).encode(), self.stream_key(connection_id)
        )

    def unlisten(self, connection_id: str) -> None:
        self._notifications.unlisten(Keys.notify(connection_id).encode())

    def notifications(self, timeout: float) -> list[bytes]:
        """The keys of the streams notified since the last call, waiting up to
        `timeout` s for the first. Sends the subscriptions asked for since the
        last call first; a stream whose subscription is confirmed counts as
        notified (what it got before is read then). After the subscription was
        lost (`StoreUnavailable`), the next call subscribes to every listened
        stream again, and each is reported once confirmed."""
        return list(self._notifications.poll(timeout))
