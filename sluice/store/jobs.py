"""The job index in Redis: what a connection's jobs, workers and queues are now,
beyond the stream's window.

Written by the append script in the same atomic step as the stream
(`events.APPEND_SCRIPT` includes `INDEX_LUA`), so the two never disagree; read
here by scripts that also read the stream's last entry id, so a page and its
`streamId` are one snapshot. Every key is under the connection's hash tag
(`Keys.index_prefix`): one slot on a Redis Cluster.

Per connection:

- one hash of every job's record (`RECORDS`: job id -> a MessagePack array,
  `RECORD_FIELDS`): its latest `job:state_change` data without `stacktrace`,
  when it was indexed (ms), its position, the fields the filters use, its
  timeline (at most `MAX_TIMELINE` entries and `MAX_TIMELINE_BYTES`, JSON
  joined by newlines, oldest first) and its size; and one hash of the
  details some jobs have (`DETAILS`: the arguments, keyword arguments,
  result and traceback last sent, kept apart because only a job's detail
  reads them). One hash rather than a key per job: no key, hash object and
  expiry per job, so a job costs less memory and an event less work;
- orderings by last update, one sorted set each, scored by position (a
  counter that grows with every indexed job event): all jobs, and per state,
  queue, name and worker;
- for prefix search: external ids and names, lex-ordered;
- the latest worker and queue snapshots (hashes) and when each was seen.

Retention: each append first removes up to a bounded number of the least
recently updated jobs past `SLUICE_JOB_INDEX_MAX_BYTES`, past
`SLUICE_JOB_RETENTION_MAX` or older than `SLUICE_JOB_RETENTION_HOURS`, so it
never scans the index; and every key an append writes expires after the
retention, so an idle connection's index empties by itself (a key not
written for that long holds only jobs that old).
"""

from __future__ import annotations

import json
from typing import Any

from ..config import Settings
from ..contract import JOB_STATES, MAX_SNAPSHOTS, MAX_TIMELINE, MAX_TIMELINE_BYTES
from ..jobindex import JobQuery
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
#: A job's record in `Keys.RECORDS`, in order (Lua indexes from 1): data
#: without stacktrace, updated (ms), position, state, queue, name, worker id,
#: external id, timeline, timeline entries, size counted, largest details
#: sent, and the data's age (`jobindex.event_age`; absent in records written
#: before it was kept).
RECORD_FIELDS = ("d", "u", "p", "s", "q", "n", "w", "x", "l", "c", "z", "e", "t")


def _keys_in_lua(source: str) -> str:
    for name in (
        "RECORDS",
        "DETAILS",
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
local RECORDS, DETAILS = P .. "$RECORDS$", P .. "$DETAILS$"
-- A job's record (`RECORD_FIELDS`, a MessagePack array), or nil.
local function load(id)
  local packed = redis.call("HGET", RECORDS, id)
  if packed then return cmsgpack.unpack(packed) end
  return nil
end
local function forget_name(name, id)
  local key = P .. "$BY_NAME$" .. name
  redis.call("ZREM", key, id)
  if redis.call("EXISTS", key) == 0 then redis.call("ZREM", P .. "$NAMES$", name) end
end
-- Bytes the index holds (job records, as counted in their `z`).
local index_bytes = tonumber(redis.call("GET", P .. "$BYTES$") or "0")
-- Remove one job from the index.
local function forget(id)
  local h = load(id)
  redis.call("ZREM", P .. "$JOBS$", id)
  if h then
    index_bytes = index_bytes - h[11]
    redis.call("ZREM", P .. "$BY_STATE$" .. h[4], id)
    if h[5] ~= "" then redis.call("ZREM", P .. "$BY_QUEUE$" .. h[5], id) end
    forget_name(h[6], id)
    if h[7] ~= "" then redis.call("ZREM", P .. "$BY_WORKER$" .. h[7], id) end
    redis.call("ZREM", P .. "$EXTERNAL_IDS$", h[8] .. "\0" .. id)
    redis.call("HDEL", RECORDS, id)
    if h[12] > 0 then redis.call("HDEL", DETAILS, id) end
  end
end
-- Positions for this batch's job events: one INCRBY for the batch (ARGV[13]
-- is how many job events it holds; duplicates leave gaps, which is fine).
local position = redis.call("INCRBY", P .. "$POSITION$", tonumber(ARGV[13]))
  - tonumber(ARGV[13])
touched[P .. "$POSITION$"] = true
-- The orderings change once per batch, not once per event: each job's record
-- before the batch (`before`, false for a new job) and after it (`after`),
-- applied by flush_index with one ZADD / ZREM per sorted set.
local before, after, order = {}, {}, {}
-- One command over many arguments (`items`, a flat list), sent in slices
-- (Lua's unpack limit); the replies of a command that answers per argument
-- (ZMSCORE, HMGET), joined in order.
local function bulk(command, key, items)
  local replies = {}
  for first = 1, #items, 1000 do
    local reply = redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
    if type(reply) == "table" then
      for j = 1, #reply do replies[#replies + 1] = reply[j] end
    end
  end
  return replies
end
-- Records are read once per batch (`prefetch`: one HMGET of its jobs) and
-- written once per batch (`save_records`: one HSET); in between, a job's
-- current record is the one this batch wrote (`pending`) or the one read.
local prefetched, pending, pending_order = {}, {}, {}
local function prefetch(events)
  local ids, wanted = {}, {}
  for _, ev in ipairs(events) do
    if ev[4] == "j" and not wanted[ev[5]] then
      wanted[ev[5]] = true
      ids[#ids + 1] = ev[5]
    end
  end
  local got = bulk("HMGET", RECORDS, ids)
  for j, id in ipairs(ids) do prefetched[id] = got[j] end
end
local function current(id)
  local record = pending[id]
  if record then return record end
  local packed = prefetched[id]
  if packed then return cmsgpack.unpack(packed) end
  if packed == nil then return load(id) end  -- not prefetched
  return nil
end
local function keep(id, record)
  if not pending[id] then pending_order[#pending_order + 1] = id end
  pending[id] = record
end
local function save_records()
  local items = {}
  for _, id in ipairs(pending_order) do
    items[#items + 1] = id
    items[#items + 1] = cmsgpack.pack(pending[id])
  end
  bulk("HSET", RECORDS, items)
end
-- Add a late entry to a timeline (entries newline-joined, oldest first) at
-- its time: before the first entry of its millisecond or later (`at` is its
-- age, which starts with its timestamp). Then keep the newest within the
-- bounds.
local function add_entry(timeline, count, entry, at)
  local cut, start = nil, 1
  at = string.match(at, "^[^ ]*")
  while start <= #timeline do
    local stop = string.find(timeline, "\n", start, true) or (#timeline + 1)
    local line_at = string.match(string.sub(timeline, start, stop - 1), '"timestamp":"([^"]*)"')
    if line_at and line_at >= at then
      cut = start
      break
    end
    start = stop + 1
  end
  if cut then
    timeline = string.sub(timeline, 1, cut - 1) .. entry .. "\n" .. string.sub(timeline, cut)
  else
    timeline = timeline .. "\n" .. entry
  end
  count = count + 1
  while count > 1 and (count > timeline_max or #timeline > timeline_bytes) do
    timeline = string.sub(timeline, string.find(timeline, "\n", 1, true) + 1)
    count = count - 1
  end
  return timeline, count
end
-- Index one accepted job event (producer id, event, data, index fields; the
-- last five, the details and the listed data, may be left out when empty).
-- The record is the job as of its newest event by age (`event_age`: its
-- timestamp, then attempt, then step): an event older than the record's
-- (producers in several processes: a publisher's `queued` may arrive after
-- the worker's `completed`) only joins the timeline, at its time, and sends
-- its details. At the same age, the last to arrive is the newest.
local function index_job(ev, data)
  if ev[18] and ev[18] ~= "" then data = ev[18] end  -- without its stacktrace
  local id, state, queue, name = ev[5], ev[6], ev[7], ev[8]
  local worker, xid, entry, sent_prev, at = ev[9], ev[10], ev[11], ev[12], ev[13]
  local old = current(id)
  local late = old and old[13] and at < old[13]
  if not late then
    position = position + 1
    if after[id] == nil then
      order[#order + 1] = id
      before[id] = old or false
    end
  end
  local prev = not late and old and old[4] or nil
  if not prev and sent_prev ~= "" then prev = sent_prev end
  entry = entry .. ',"previousState":' .. (prev and ('"' .. prev .. '"') or "null") .. "}"
  local timeline, count
  if old and not late then
    timeline, count = old[9] .. "\n" .. entry, old[10] + 1
    while count > 1 and (count > timeline_max or #timeline > timeline_bytes) do
      timeline = string.sub(timeline, string.find(timeline, "\n", 1, true) + 1)
      count = count - 1
    end
  elseif late then
    timeline, count = add_entry(old[9], old[10], entry, at)
  else
    timeline, count = entry, 1
  end
  -- Arguments, keyword arguments, result and traceback are kept apart (only
  -- the detail reads them) until sent again; the record counts the largest
  -- sent (`e`).
  local extra, sent = old and old[12] or 0, 0
  if ev[14] then
    for j = 1, 4 do sent = sent + #ev[13 + j] end
  end
  if sent > 0 then
    local details = {"", "", "", ""}
    if extra > 0 then
      local packed = redis.call("HGET", DETAILS, id)
      if packed then details = cmsgpack.unpack(packed) end
    end
    for j = 1, 4 do
      if ev[13 + j] ~= "" then details[j] = ev[13 + j] end
    end
    redis.call("HSET", DETAILS, id, cmsgpack.pack(details))
    touched[DETAILS] = true
    extra = math.max(extra, sent)
  end
  local record
  if late then
    -- The job as it was, with the entry in its timeline.
    record = old
    record[9], record[10], record[12] = timeline, count, extra
    data, state, queue, name, worker, xid = old[1], old[4], old[5], old[6], old[7], old[8]
  end
  -- Its size: what the job holds plus a fixed overhead.
  local size = #data + #timeline + #id + #xid + #name + #queue + #worker + extra + 120
  index_bytes = index_bytes + size - (old and old[11] or 0)
  if late then
    record[11] = size
    if after[id] ~= nil then after[id] = record end
  else
    record = {data, now, position, state, queue, name, worker, xid, timeline, count, size, extra, at}
    after[id] = record
  end
  keep(id, record)
end
-- Apply the batch's changes to the orderings: per sorted set one ZREM of
-- what left it and one ZADD of what entered or moved (keys built once per
-- set, not per job).
local function flush_index()
  local prefixes = {P .. "$BY_STATE$", P .. "$BY_QUEUE$", P .. "$BY_NAME$", P .. "$BY_WORKER$"}
  local adds, removes = {{}, {}, {}, {}}, {{}, {}, {}, {}}  -- per ordering: value -> items
  local all, xids, names, names_gone = {}, {}, {}, {}
  for _, id in ipairs(order) do
    local was, is = before[id], after[id]
    local pos = tostring(is[3])  -- once per job, not once per sorted set
    all[#all + 1] = pos
    all[#all + 1] = id
    if not was then
      xids[#xids + 1] = "0"
      xids[#xids + 1] = is[8] .. "\0" .. id
      names[is[6]] = true
    end
    for f = 1, 4 do
      -- state, queue, name, worker: the record's fields 4 to 7
      local value, old = is[f + 3], was and was[f + 3]
      if old and old ~= value and old ~= "" then
        local gone = removes[f]
        local list = gone[old]
        if not list then list = {}; gone[old] = list end
        list[#list + 1] = id
        if f == 3 then
          names_gone[#names_gone + 1] = old
          names[value] = true
        end
      end
      if value ~= "" then
        local entered = adds[f]
        local list = entered[value]
        if not list then list = {}; entered[value] = list end
        list[#list + 1] = pos
        list[#list + 1] = id
      end
    end
  end
  if #all == 0 then return end
  for f = 1, 4 do
    for value, members in pairs(removes[f]) do bulk("ZREM", prefixes[f] .. value, members) end
  end
  local function zadd(key, items)
    bulk("ZADD", key, items)
    touched[key] = true
  end
  zadd(P .. "$JOBS$", all)
  if #xids > 0 then zadd(P .. "$EXTERNAL_IDS$", xids) end
  local name_items = {}
  for name in pairs(names) do
    name_items[#name_items + 1] = "0"
    name_items[#name_items + 1] = name
  end
  if #name_items > 0 then zadd(P .. "$NAMES$", name_items) end
  for f = 1, 4 do
    for value, items in pairs(adds[f]) do zadd(prefixes[f] .. value, items) end
  end
  for _, name in ipairs(names_gone) do
    if redis.call("EXISTS", prefixes[3] .. name) == 0 then
      redis.call("ZREM", P .. "$NAMES$", name)
    end
  end
  touched[RECORDS] = true
end
-- The latest snapshot of a worker or a queue.
local function index_snapshot(hash, seen, member, data)
  redis.call("HSET", hash, member, data)
  redis.call("ZADD", seen, now, member)
  touched[hash], touched[seen] = true, true
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
local function index_event(ev)
  local kind, data = ev[4], ev[3]
  if kind == "j" then
    index_job(ev, data)
    return true
  elseif kind == "w" then
    index_snapshot(P .. "$WORKERS$", P .. "$WORKERS_SEEN$", ev[5], data)
  elseif kind == "q" then
    index_snapshot(P .. "$QUEUES$", P .. "$QUEUES_SEEN$", ev[5], data)
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
      local h = load(id)
      if h and h[2] >= now - keep_ms then return end
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
-- budget, the ids q may be exactly, prefix ids, prefix names, then every
-- job state (for the counts: all jobs, then per state).
local P = ARGV[1]
local filters = {{ARGV[2], "$BY_STATE$"}, {ARGV[3], "$BY_QUEUE$"}, {ARGV[4], "$BY_NAME$"}, {ARGV[5], "$BY_WORKER$"}}
local q, cursor, limit, budget = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local exact = {ARGV[10], ARGV[11]}
local prefix_ids, prefix_names = tonumber(ARGV[12]), tonumber(ARGV[13])
local below = cursor == "" and "+inf" or ("(" .. cursor)
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local stream_id = last[1] and last[1][1] or "0-0"
local function fetch(id)
  -- {data, updatedAt, position, ...} (`RECORD_FIELDS`) if the job exists and
  -- passes the filters.
  local packed = redis.call("HGET", P .. "$RECORDS$", id)
  if not packed then return nil end
  local h = cmsgpack.unpack(packed)
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
local counts = {redis.call("ZCARD", KEYS[2])}
for i = 14, #ARGV do counts[#counts + 1] = redis.call("ZCARD", P .. "$BY_STATE$" .. ARGV[i]) end
return {stream_id, next_cursor, out, counts}
"""
)

#: A job's record and details, by the first of the given ids that exists.
_GET_LUA = _keys_in_lua(
    r"""#!lua flags=no-writes
-- KEYS: the stream. ARGV: the key prefix, then candidate job ids.
local P = ARGV[1]
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local stream_id = last[1] and last[1][1] or "0-0"
for i = 2, #ARGV do
  local packed = redis.call("HGET", P .. "$RECORDS$", ARGV[i])
  if packed then
    local h = cmsgpack.unpack(packed)
    local details = {"", "", "", ""}
    if h[12] > 0 then
      local more = redis.call("HGET", P .. "$DETAILS$", ARGV[i])
      if more then details = cmsgpack.unpack(more) end
    end
    return {stream_id, {h[1], tostring(h[2]), h[9], details[1], details[2], details[3], details[4]}}
  end
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
    P .. "$WORKERS_SEEN$", P .. "$QUEUES$", P .. "$QUEUES_SEEN$", RECORDS, DETAILS)
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


def _job(data: bytes, updated_ms: bytes) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(data)
    job["updatedAt"] = iso_from_ms(int(updated_ms))
    return job


def list_jobs(
    r: Redis, connection_id: str, query: JobQuery, exact: tuple[str, str]
) -> dict[str, Any]:
    """A page of jobs, newest update first, with the stream's last id and the
    connection's job counts (all, and per state; whatever the filters): one snapshot."""
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
        *JOB_STATES,
    ]
    stream_id, next_cursor, flat, counts = script(r, _LIST_LUA)(keys=keys, args=args)
    jobs = [_job(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return {
        "data": jobs,
        "nextCursor": text(next_cursor) or None,
        "streamId": text(stream_id),
        "counts": dict(zip(("total", *JOB_STATES), map(int, counts), strict=True)),
    }


def get_job(r: Redis, connection_id: str, candidates: tuple[str, str]) -> dict[str, Any] | None:
    """The job (its latest data, timeline and what its producer sent of arguments,
    result and traceback), by the first candidate id that exists; None if none."""
    reply = script(r, _GET_LUA)(
        keys=[Keys.stream(connection_id)], args=[Keys.index_prefix(connection_id), *candidates]
    )
    if len(reply) < 2:
        return None
    data, updated, timeline, args, kwargs, result, traceback = reply[1]
    job = _job(data, updated)
    job["timeline"] = [json.loads(entry) for entry in timeline.split(b"\n") if entry]
    for value, name in ((args, "args"), (kwargs, "kwargs"), (result, "result")):
        if value:
            job[name] = json.loads(value)
    if traceback:
        job["traceback"] = traceback.decode()
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


def worker_snapshots(r: Redis, connection_id: str, worker_ids: list[str]) -> dict[str, Any]:
    """The latest snapshots of the workers with these ids (a worker's `id`), by
    id; a worker without one is left out."""
    if not worker_ids:
        return {}
    values = r.hmget(Keys.index(connection_id, Keys.WORKERS), worker_ids)
    return {
        worker_id: json.loads(value)
        for worker_id, value in zip(worker_ids, values, strict=True)
        if value is not None
    }


def purge(r: Redis, connection_id: str) -> None:
    """Delete a connection's whole index, a bounded batch per script call."""
    purge_batch = script(r, _PURGE_LUA)
    keys = [Keys.index(connection_id, Keys.JOBS)]
    while purge_batch(keys=keys, args=[Keys.index_prefix(connection_id), PURGE_BATCH]):
        pass
