"""The job index in Redis: what a connection's jobs, workers and queues are now,
beyond the stream's window.

Written by the append script in the same atomic step as the stream
(`events.APPEND_SCRIPT` includes `INDEX_LUA`), so the two never disagree; read
here by scripts that also read the stream's last entry id, so a page and its
`streamId` are one snapshot. Every key is under the connection's hash tag
(`Keys.index_prefix`): one slot on a Redis Cluster.

Per connection:

- a hash per job (`JOB` + job id): the latest `job:state_change` data
  without its `stacktrace` (`d`; the traceback is `t`),
  when it was indexed (`u`, ms), its position (`p`), the fields the filters
  use (`s`, `q`, `n`, `w`, `x`), its timeline (`l`: at most `MAX_TIMELINE`
  entries, JSON joined by newlines, oldest first; `c`: how many), and the
  arguments, keyword arguments, result and traceback last sent (`a`, `k`,
  `r`, `t`);
- orderings by last update, one sorted set each, scored by position (a
  counter that grows with every indexed job event): all jobs, and per state,
  queue, name and worker;
- for prefix search: external ids and names, lex-ordered;
- the latest worker and queue snapshots (hashes) and when each was seen.

Retention: every job key expires a while after its last event, and each
append first removes up to a bounded number of the least recently updated
jobs past `SLUICE_JOB_RETENTION_MAX` or older than
`SLUICE_JOB_RETENTION_HOURS`, so it never scans the index.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import Settings
from ..contract import MAX_SNAPSHOTS, MAX_TIMELINE, MAX_TIMELINE_BYTES
from ..jobindex import INDEX_STRIDE, JobQuery
from ..timefmt import iso_from_ms
from .client import Redis, script, text
from .keys import Keys

#: Index entries a list request examines at most (a filter that matches few of
#: them returns a short page with a cursor to go on from).
SCAN_BUDGET = 2_000
#: External ids a prefix search looks at, and names.
PREFIX_IDS = 1_000
PREFIX_NAMES = 20
#: Jobs removed per purge call when a connection is deleted.
PURGE_BATCH = 500


def _keys_in_lua(source: str) -> str:
    for name in (
        "JOB",
        "JOBS",
        "BY_STATE",
        "BY_QUEUE",
        "BY_NAME",
        "BY_WORKER",
        "EXTERNAL_IDS",
        "NAMES",
        "POSITION",
        "BYTES",
        "WORKERS",
        "WORKERS_SEEN",
        "QUEUES",
        "QUEUES_SEEN",
    ):
        # Longest names first would matter for prefixes; `$NAME$` delimits them.
        source = source.replace(f"${name}$", getattr(Keys, name))
    return source


#: Lua functions the append script uses; they expect these locals: P (the
#: connection's key prefix), now (ms), keep_ms, keep_max, timeline_max,
#: timeline_bytes, snapshots_max, max_bytes, and `touched` (a table of keys to
#: expire once at the end).
INDEX_LUA = _keys_in_lua(
    r"""
local function zadd(key, score, member)
  redis.call("ZADD", key, score, member)
  touched[key] = true
end
local function forget_name(name, id)
  local key = P .. "$BY_NAME$" .. name
  redis.call("ZREM", key, id)
  if redis.call("EXISTS", key) == 0 then redis.call("ZREM", P .. "$NAMES$", name) end
end
-- Bytes the index holds (job hashes, as counted in their `z` field).
local index_bytes = tonumber(redis.call("GET", P .. "$BYTES$") or "0")
-- Remove one job from the index.
local function forget(id)
  local key = P .. "$JOB$" .. id
  local h = redis.call("HMGET", key, "s", "q", "n", "w", "x", "z")
  index_bytes = index_bytes - tonumber(h[6] or "0")
  redis.call("ZREM", P .. "$JOBS$", id)
  if h[1] then
    redis.call("ZREM", P .. "$BY_STATE$" .. h[1], id)
    if h[2] ~= "" then redis.call("ZREM", P .. "$BY_QUEUE$" .. h[2], id) end
    forget_name(h[3], id)
    if h[4] ~= "" then redis.call("ZREM", P .. "$BY_WORKER$" .. h[4], id) end
    redis.call("ZREM", P .. "$EXTERNAL_IDS$", h[5] .. "\0" .. id)
  end
  redis.call("DEL", key)
end
-- Positions for this batch's job events: one INCRBY for the batch (ARGV[13]
-- is how many job events it holds; duplicates leave gaps, which is fine).
local position = redis.call("INCRBY", P .. "$POSITION$", tonumber(ARGV[13]))
  - tonumber(ARGV[13])
touched[P .. "$POSITION$"] = true
-- The orderings change once per batch, not once per event: what each job was
-- in before the batch (`before`, nil for a new job) and is in after it
-- (`after`), applied by flush_index with one ZADD / ZREM per sorted set.
local before, after, order = {}, {}, {}
-- Index one accepted job event; i is the event's first ARGV (producer id).
-- The timeline is a field of the job's hash: its entries (JSON, which never
-- holds a raw newline) joined by newlines, oldest first.
local function index_job(i, data)
  if ARGV[i + 16] ~= "" then data = ARGV[i + 16] end  -- without its stacktrace
  local id, state, queue, name = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local worker, xid, entry, sent_prev = ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
  local key = P .. "$JOB$" .. id
  local old = redis.call("HMGET", key, "s", "q", "n", "w", "l", "c", "z", "e")
  position = position + 1
  if after[id] == nil then
    order[#order + 1] = id
    before[id] = old[1] and {old[1], old[2], old[3], old[4]} or false
  end
  after[id] = {state, queue, name, worker, position, xid}
  local prev = old[1]
  if not prev and sent_prev ~= "" then prev = sent_prev end
  entry = entry .. ',"previousState":' .. (prev and ('"' .. prev .. '"') or "null") .. "}"
  local timeline, count = old[5], tonumber(old[6] or "0")
  if timeline and count > 0 then
    timeline = timeline .. "\n" .. entry
    count = count + 1
    while count > 1 and (count > timeline_max or #timeline > timeline_bytes) do
      timeline = string.sub(timeline, string.find(timeline, "\n", 1, true) + 1)
      count = count - 1
    end
  else
    timeline, count = entry, 1
  end
  -- Its size: what the job holds, with arguments, result and traceback at
  -- the largest sent (they are kept until sent again), plus a fixed overhead.
  local extra, sent = tonumber(old[8] or "0"), 0
  for j = 1, 4 do sent = sent + #ARGV[i + 11 + j] end
  extra = math.max(extra, sent)
  local size = #data + #timeline + #id + #xid + #name + #queue + #worker + extra + 200
  index_bytes = index_bytes + size - tonumber(old[7] or "0")
  local fields = {"d", data, "u", now, "p", position, "s", state, "q", queue, "n", name,
    "w", worker, "x", xid, "l", timeline, "c", count, "z", size, "e", extra}
  for j, field in ipairs({"a", "k", "r", "t"}) do
    if ARGV[i + 11 + j] ~= "" then
      fields[#fields + 1] = field
      fields[#fields + 1] = ARGV[i + 11 + j]
    end
  end
  redis.call("HSET", key, unpack(fields))
  if not old[1] then
    -- Expiry from creation, with a margin (a quarter of the retention, at
    -- least an hour): the sweep below normally forgets a job by the age of
    -- its last event long before; the expiry empties an idle connection.
    redis.call("PEXPIRE", key, keep_ms + math.max(3600000, math.floor(keep_ms / 4)))
  end
end
local function bulk(command, key, items)
  -- items: a flat list of arguments; sent in slices (Lua's unpack limit).
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end
-- Apply the batch's changes to the orderings.
local function flush_index()
  local adds, removes, names_gone = {}, {}, {}
  local function add(key, score, member)
    local list = adds[key]
    if not list then list = {}; adds[key] = list end
    list[#list + 1] = score
    list[#list + 1] = member
  end
  local function remove(key, member)
    local list = removes[key]
    if not list then list = {}; removes[key] = list end
    list[#list + 1] = member
  end
  local prefixes = {"$BY_STATE$", "$BY_QUEUE$", "$BY_NAME$", "$BY_WORKER$"}
  for _, id in ipairs(order) do
    local was, now_is = before[id], after[id]
    local pos = now_is[5]
    add(P .. "$JOBS$", pos, id)
    if not was then
      add(P .. "$EXTERNAL_IDS$", 0, now_is[6] .. "\0" .. id)
      add(P .. "$NAMES$", 0, now_is[3])
    end
    for f = 1, 4 do
      if was and was[f] ~= now_is[f] and was[f] ~= "" then
        remove(P .. prefixes[f] .. was[f], id)
        if f == 3 then
          names_gone[#names_gone + 1] = was[3]
          add(P .. "$NAMES$", 0, now_is[3])
        end
      end
      if now_is[f] ~= "" then add(P .. prefixes[f] .. now_is[f], pos, id) end
    end
  end
  for key, members in pairs(removes) do bulk("ZREM", key, members) end
  for key, items in pairs(adds) do
    bulk("ZADD", key, items)
    touched[key] = true
  end
  for _, name in ipairs(names_gone) do
    if redis.call("EXISTS", P .. "$BY_NAME$" .. name) == 0 then
      redis.call("ZREM", P .. "$NAMES$", name)
    end
  end
end
-- The latest snapshot of a worker or a queue.
local function index_snapshot(hash, seen, member, data)
  redis.call("HSET", hash, member, data)
  zadd(seen, now, member)
  touched[hash] = true
  local excess = redis.call("ZCARD", seen) - snapshots_max
  if excess > 0 then
    for _, gone in ipairs(redis.call("ZRANGE", seen, 0, excess - 1)) do
      redis.call("HDEL", hash, gone)
      redis.call("ZREM", seen, gone)
    end
  end
end
-- Index one appended event by its kind ("j", "w", "q", or "" for none);
-- true for a job event.
local function index_event(i, data)
  local kind = ARGV[i + 3]
  if kind == "j" then
    index_job(i, data)
    return true
  elseif kind == "w" then
    index_snapshot(P .. "$WORKERS$", P .. "$WORKERS_SEEN$", ARGV[i + 4], data)
  elseif kind == "q" then
    index_snapshot(P .. "$QUEUES$", P .. "$QUEUES_SEEN$", ARGV[i + 4], data)
  end
  return false
end
-- Retention, bounded work per call: the least recently updated jobs past the
-- byte budget, past the count, then those older than keep_ms.
local function enforce_retention(budget)
  local all = P .. "$JOBS$"
  while index_bytes > max_bytes and budget > 0 do
    local ids = redis.call("ZRANGE", all, 0, 9)
    if #ids == 0 then index_bytes = 0; break end
    for _, id in ipairs(ids) do forget(id) end
    budget = budget - #ids
  end
  local excess = redis.call("ZCARD", all) - keep_max
  while excess > 0 and budget > 0 do
    local ids = redis.call("ZRANGE", all, 0, math.min(excess, budget, 100) - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do forget(id) end
    excess, budget = excess - #ids, budget - #ids
  end
  while budget > 0 do
    local ids = redis.call("ZRANGE", all, 0, 9)
    if #ids == 0 then return end
    for _, id in ipairs(ids) do
      local at = redis.call("HGET", P .. "$JOB$" .. id, "u")
      if at and tonumber(at) >= now - keep_ms then return end
      forget(id)
      budget = budget - 1
    end
  end
end
local function save_bytes()
  redis.call("SET", P .. "$BYTES$", math.max(index_bytes, 0))
  touched[P .. "$BYTES$"] = true
end
"""
)

#: The page of jobs and the stream's last id, one snapshot.
_LIST_LUA = _keys_in_lua(
    r"""#!lua flags=no-writes
-- KEYS: the stream, the ordering of all jobs. ARGV: the key prefix, state,
-- queue, name, worker ("" = any), q ("" = none), cursor ("" = newest), limit,
-- budget, the ids q may be exactly, prefix ids, prefix names.
local P = ARGV[1]
local filters = {{ARGV[2], "$BY_STATE$"}, {ARGV[3], "$BY_QUEUE$"}, {ARGV[4], "$BY_NAME$"}, {ARGV[5], "$BY_WORKER$"}}
local q, cursor, limit, budget = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local exact = {ARGV[10], ARGV[11]}
local prefix_ids, prefix_names = tonumber(ARGV[12]), tonumber(ARGV[13])
local below = cursor == "" and "+inf" or ("(" .. cursor)
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local stream_id = last[1] and last[1][1] or "0-0"
local function fetch(id)
  -- {data, updatedAt, position} if the job exists and passes the filters.
  local h = redis.call("HMGET", P .. "$JOB$" .. id, "d", "u", "p", "s", "q", "n", "w")
  if not h[1] then return nil end
  for i, f in ipairs(filters) do
    if f[1] ~= "" and h[i + 3] ~= f[1] then return nil end
  end
  return h
end
local out, next_cursor = {}, ""
if q == "" then
  -- Walk the smallest ordering a filter names.
  local base, size = KEYS[2], nil
  for _, f in ipairs(filters) do
    if f[1] ~= "" then
      local key = P .. f[2] .. f[1]
      local n = redis.call("ZCARD", key)
      if size == nil or n < size then base, size = key, n end
    end
  end
  local found, examined = 0, 0
  while found < limit and examined < budget do
    local chunk = redis.call("ZREVRANGEBYSCORE", base, below, "-inf", "WITHSCORES", "LIMIT", 0, math.min(limit - found + 50, budget - examined))
    if #chunk == 0 then next_cursor = ""; break end
    for j = 1, #chunk, 2 do
      examined = examined + 1
      local h = fetch(chunk[j])
      if h then
        out[#out + 1] = h[1]; out[#out + 1] = h[2]
        found = found + 1
      end
      below = "(" .. chunk[j + 1]
      next_cursor = chunk[j + 1]
      if found >= limit then break end
    end
  end
  if next_cursor ~= "" and #redis.call("ZREVRANGEBYSCORE", base, below, "-inf", "LIMIT", 0, 1) == 0 then
    next_cursor = ""
  end
else
  -- Candidates: the exact ids, external ids starting with q, jobs of names
  -- starting with q; then newest first below the cursor.
  local seen, candidates = {}, {}
  local function consider(id)
    if seen[id] then return end
    seen[id] = true
    local h = fetch(id)
    if h and (cursor == "" or tonumber(h[3]) < tonumber(cursor)) then
      candidates[#candidates + 1] = {tonumber(h[3]), h}
    end
  end
  for _, id in ipairs(exact) do consider(id) end
  for _, member in ipairs(redis.call("ZRANGEBYLEX", P .. "$EXTERNAL_IDS$", "[" .. q, "[" .. q .. "\255", "LIMIT", 0, prefix_ids)) do
    consider(string.match(member, "%z([^%z]*)$"))
  end
  for _, name in ipairs(redis.call("ZRANGEBYLEX", P .. "$NAMES$", "[" .. q, "[" .. q .. "\255", "LIMIT", 0, prefix_names)) do
    for _, id in ipairs(redis.call("ZREVRANGEBYSCORE", P .. "$BY_NAME$" .. name, below, "-inf", "LIMIT", 0, limit + 1)) do
      consider(id)
    end
  end
  table.sort(candidates, function(a, b) return a[1] > b[1] end)
  for i = 1, math.min(limit, #candidates) do
    out[#out + 1] = candidates[i][2][1]; out[#out + 1] = candidates[i][2][2]
  end
  if #candidates > limit then next_cursor = tostring(candidates[limit][1]) end
end
return {stream_id, next_cursor, out}
"""
)

#: A job's hash and timeline, by the first of the given ids that exists.
_GET_LUA = _keys_in_lua(
    r"""#!lua flags=no-writes
-- KEYS: the stream. ARGV: the key prefix, then candidate job ids.
local P = ARGV[1]
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local stream_id = last[1] and last[1][1] or "0-0"
for i = 2, #ARGV do
  local fields = redis.call("HGETALL", P .. "$JOB$" .. ARGV[i])
  if #fields > 0 then return {stream_id, fields} end
end
return {stream_id}
"""
)

#: The latest snapshots of a hash (workers or queues), with the stream's last id.
_SNAPSHOTS_LUA = r"""#!lua flags=no-writes
-- KEYS: the stream, the snapshots hash, its recency zset.
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local stream_id = last[1] and last[1][1] or "0-0"
local members = redis.call("ZREVRANGE", KEYS[3], 0, -1)
local out = {}
if #members > 0 then out = redis.call("HMGET", KEYS[2], unpack(members)) end
return {stream_id, out}
"""

#: Remove up to ARGV[2] jobs of a deleted connection; returns how many remain.
_PURGE_LUA = _keys_in_lua(
    r"""#!lua
local P = ARGV[1]
local touched = {}
"""
    + INDEX_LUA.split("-- Positions for this batch", 1)[0]
    + r"""
local all = P .. "$JOBS$"
for _, id in ipairs(redis.call("ZRANGE", all, 0, tonumber(ARGV[2]) - 1)) do forget(id) end
local left = redis.call("ZCARD", all)
if left == 0 then
  redis.call("DEL", P .. "$EXTERNAL_IDS$", P .. "$NAMES$", P .. "$POSITION$", P .. "$BYTES$", P .. "$WORKERS$",
    P .. "$WORKERS_SEEN$", P .. "$QUEUES$", P .. "$QUEUES_SEEN$")
end
return left
"""
)


def index_args(connection_id: str, settings: Settings) -> list[Any]:
    """The append script's index parameters (after its own five)."""
    return [
        Keys.index_prefix(connection_id),
        int(settings.job_retention_hours * 3_600_000),
        settings.job_retention_max,
        MAX_TIMELINE,
        MAX_SNAPSHOTS,
        settings.job_index_max_bytes,
        MAX_TIMELINE_BYTES,
    ]


#: ARGV the append script takes per event: producer id, event, data, then the index's.
EVENT_STRIDE = 3 + INDEX_STRIDE


def _job(data: bytes, updated_ms: bytes) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(data)
    job["updatedAt"] = iso_from_ms(int(updated_ms))
    return job


def list_jobs(
    r: Redis, connection_id: str, query: JobQuery, exact: tuple[str, str]
) -> dict[str, Any]:
    """A page of jobs, newest update first, with the stream's last id (one snapshot)."""
    keys = [Keys.stream(connection_id), Keys.index(connection_id, Keys.JOBS)]
    args = [
        Keys.index_prefix(connection_id),
        query.state or "",
        query.queue or "",
        query.name or "",
        query.worker or "",
        query.q or "",
        "" if query.cursor is None else str(query.cursor),
        query.limit,
        SCAN_BUDGET,
        *exact,
        PREFIX_IDS,
        PREFIX_NAMES,
    ]
    stream_id, next_cursor, flat = script(r, _LIST_LUA)(keys=keys, args=args)
    jobs = [_job(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return {
        "data": jobs,
        "nextCursor": text(next_cursor) or None,
        "streamId": text(stream_id),
    }


def get_job(r: Redis, connection_id: str, candidates: tuple[str, str]) -> dict[str, Any] | None:
    """The job (its latest data, timeline and what its producer sent of arguments,
    result and traceback), by the first candidate id that exists; None if none."""
    reply = script(r, _GET_LUA)(
        keys=[Keys.stream(connection_id)], args=[Keys.index_prefix(connection_id), *candidates]
    )
    if len(reply) < 2:
        return None
    fields = dict(zip(reply[1][::2], reply[1][1::2], strict=True))
    job = _job(fields[b"d"], fields[b"u"])
    job["timeline"] = [json.loads(entry) for entry in fields.get(b"l", b"").split(b"\n") if entry]
    for field, name in ((b"a", "args"), (b"k", "kwargs"), (b"r", "result")):
        if field in fields:
            job[name] = json.loads(fields[field])
    if b"t" in fields:
        job["traceback"] = fields[b"t"].decode()
    return {"data": job, "streamId": text(reply[0])}


def snapshots(r: Redis, connection_id: str, kind: str) -> dict[str, Any]:
    """The latest worker (`kind` "workers") or queue ("queues") snapshots, most
    recently seen first, with the stream's last id."""
    hash_key, seen_key = {
        "workers": (Keys.WORKERS, Keys.WORKERS_SEEN),
        "queues": (Keys.QUEUES, Keys.QUEUES_SEEN),
    }[kind]
    keys = [
        Keys.stream(connection_id),
        Keys.index(connection_id, hash_key),
        Keys.index(connection_id, seen_key),
    ]
    stream_id, values = script(r, _SNAPSHOTS_LUA)(keys=keys, args=[])
    return {
        "data": [json.loads(value) for value in values if value is not None],
        "streamId": text(stream_id),
    }


def purge(r: Redis, connection_id: str) -> None:
    """Delete a connection's whole index, a bounded batch per script call."""
    purge_batch = script(r, _PURGE_LUA)
    keys = [Keys.index(connection_id, Keys.JOBS)]
    while purge_batch(keys=keys, args=[Keys.index_prefix(connection_id), PURGE_BATCH]):
        pass
