// The live view's state: pages and snapshots from the job index API, then stream
// events on top. No DOM here.
//
// Joining a snapshot to the stream without a gap or a duplicate: every API answer
// carries `streamId`, the stream's last entry id when it was read. The store keeps,
// per kind of data (jobs, workers, queues), the id it is up to date with ("as of");
// the stream is opened from the oldest of them, and an event is applied only to a
// kind that is not already up to date with it. The stream delivers events in id
// order, so after an event every kind is up to date with its id.
//
// The jobs list holds the jobs of the current filter in the order the page got them:
// jobs first seen on the stream on top (newest first), then the pages loaded from
// the API (most recently updated first). A job that changes is updated where it is.
//
// The connection's job counts (all, and per state, whatever the filter) come from
// the API too: every page carries them, read with its `streamId`. Between two
// answers, an event of a job whose state the store knows moves it from one count
// to another at once ("optimistic"); the next answer replaces those guesses with
// the server's figures (the deltas of events it already reflects are dropped, the
// later ones are applied on top of it).

import { compareIds, parseId } from "./ids.js";
import { emptyFilter, isFiltered, matchesFilter } from "./query.js";
import { parseTime } from "../format.js";

import { JOB_STATES, JOB_STATE_CHANGE, QUEUE_SNAPSHOT, WORKER_HEARTBEAT, WORKER_STATE_CHANGE } from "../contract.js";

export { JOB_STATES };
export const FINISHED = new Set(["completed", "failed", "cancelled"]);

/** Where a state comes in one attempt of a job's life (sluice/jobindex.py). */
const LIFE_STEP = { active: 1, retrying: 2, completed: 2, failed: 2, cancelled: 2 };

/**
 * How new a job event is, as the job index orders one job's events
 * (docs/api.md): [timestamp in ms, attempt (1 when absent), step in the
 * attempt (waiting 0, running 1, done 2)]; null without a timestamp.
 */
export function eventAge(d) {
  const when = parseTime(d.timestamp);
  if (when == null) return null;
  const attempt = Number.isInteger(d.attempt) && d.attempt > 0 ? d.attempt : 1;
  return [when, attempt, LIFE_STEP[d.state] || 0];
}

/** Whether an event of age `age` is older than what `job` shows. */
export function isLate(job, age) {
  if (age == null || job.age == null) return false;
  for (let i = 0; i < 3; i++) {
    if (age[i] !== job.age[i]) return age[i] < job.age[i];
  }
  return false;
}
export const KINDS = ["job", "worker", "queue"];

const JOB_FIELDS = [
  "externalId", "name", "queue", "workerId", "attempt", "maxRetries", "progress",
  "error", "createdAt", "startedAt", "finishedAt",
];
const SPARK_WINDOW_MS = 5 * 60 * 1000;
const SPARK_MAX_POINTS = 300;
const RATE_WINDOW_S = 120;
/** Optimistic count changes kept between two answers of the server, at most. */
const MAX_COUNT_DELTAS = 10000;

/** The kind of data a stream event changes ("job", "worker", "queue"), or "". */
export function kindOf(type) {
  if (type === JOB_STATE_CHANGE) return "job";
  if (type === WORKER_HEARTBEAT || type === WORKER_STATE_CHANGE) return "worker";
  if (type === QUEUE_SNAPSHOT) return "queue";
  return "";
}

function zeroCounts() {
  return Object.fromEntries(JOB_STATES.map((s) => [s, 0]));
}

/** The fields the filters look at, from one event's (or one API job's) data. */
function filterFields(key, d) {
  return {
    id: key,
    externalId: d.externalId,
    name: d.name,
    state: d.state,
    queue: d.queue || "",
    workerId: d.workerId || "",
  };
}

/** SLUICE_WORKER_EXPIRY_SECONDS until GET /api/config says (docs/api.md, "Worker liveness"). */
export const DEFAULT_WORKER_EXPIRY_MS = 30000;

/**
 * A worker's state as the page shows and counts it, at server time `nowMs`: the
 * server's rule (sluice/liveness.py). Offline when it said so, or when its latest
 * event's timestamp is more than `expiryMs` old (its heartbeats stopped).
 * Returns {state, expired, silentMs}.
 */
export function workerStatus(w, nowMs, expiryMs) {
  const silentMs = w.seenMs == null ? null : Math.max(0, nowMs - w.seenMs);
  const expired = w.state !== "offline" && silentMs != null && silentMs > expiryMs;
  return { state: expired ? "offline" : w.state, expired, silentMs };
}

export class Store {
  constructor({ maxJobs = 20000 } = {}) {
    this.maxJobs = maxJobs;
    this.filter = emptyFilter();
    this.workerExpiryMs = DEFAULT_WORKER_EXPIRY_MS;
    this.reset();
  }

  /** Forget everything (a new page). */
  reset() {
    this.resetJobs(this.filter);
    /** @type {Map<string, any>} */
    this.workers = new Map();
    /** @type {Map<string, any>} externalId -> worker */
    this.byExternalId = new Map();
    /** @type {Map<string, any>} */
    this.queues = new Map();
    /** Per kind: {id, parsed} of the stream entry it is up to date with, or null. */
    this.asOf = { job: null, worker: null, queue: null };
    this.lastId = null; // the newest entry id counted as received
    this.lastParsed = null;
    this.eventCount = 0;
    this.duplicates = 0;
    this.buckets = new Map(); // second -> events appended in that second (server time)
    this.version = 0;
    this.workersChanged = true;
    this.queuesChanged = true;
    this.resetCounts();
  }

  /** Forget the connection's job counts (until the next answer of the API). */
  resetCounts() {
    /** The server's counts ({total, <state>: n…}) plus the deltas after them, or null. */
    this.counts = null;
    /** The server's last counts, and the parsed stream id they are up to date with. */
    this.countsBase = null;
    this.countsAsOf = null;
    /** Optimistic changes since countsAsOf: {parsed, from, to} (from "" = a new job). */
    this.countDeltas = [];
    this.countsVersion = (this.countsVersion || 0) + 1;
  }

  /**
   * Take the connection's job counts from an API answer (`counts`, read with
   * `streamId`). An answer older than the counts held is ignored. Returns whether
   * the counts were taken.
   */
  setCounts(counts, streamId) {
    if (!counts || typeof counts !== "object" || !Number.isFinite(counts.total)) return false;
    const parsed = parseId(streamId);
    if (!parsed) return false;
    if (this.countsAsOf && compareIds(parsed, this.countsAsOf) < 0) return false;
    const base = { total: counts.total };
    for (const s of JOB_STATES) base[s] = Number.isFinite(counts[s]) ? counts[s] : 0;
    this.countsBase = base;
    this.countsAsOf = parsed;
    // What the answer already reflects goes; what came after it stays on top.
    this.countDeltas = this.countDeltas.filter((d) => compareIds(d.parsed, parsed) > 0);
    this.counts = { ...base };
    for (const d of this.countDeltas) this.shiftCount(d.from, d.to);
    this.countsVersion++;
    return true;
  }

  /** One job moved from state `from` ("": it is new) to state `to`. */
  shiftCount(from, to) {
    const c = this.counts;
    if (from) c[from] = Math.max(0, (c[from] || 0) - 1);
    else c.total++;
    c[to] = (c[to] || 0) + 1;
  }

  /**
   * A job event after the counts held: move the job between counts when its
   * previous state is known (the list holds it, or the list holds every job of the
   * connection so it is a new one).
   */
  countEvent(parsed, known, from, to) {
    if (!this.counts || compareIds(parsed, this.countsAsOf) <= 0) return;
    if (!known && (isFiltered(this.filter) || this.cursor || this.trimmed)) return;
    const prev = known ? from : "";
    if (prev === to) return;
    this.countDeltas.push({ parsed, from: prev, to });
    // The server has not answered for long: forget the oldest half of the guesses
    // (they stay in the figures shown until its next answer).
    if (this.countDeltas.length > MAX_COUNT_DELTAS) this.countDeltas.splice(0, MAX_COUNT_DELTAS / 2);
    this.shiftCount(prev, to);
    this.countsVersion++;
  }

  /** Empty the jobs list, for `filter` (a new filter, or a reload). */
  resetJobs(filter) {
    this.filter = { ...(filter || emptyFilter()) };
    /** @type {Map<string, any>} */
    this.jobs = new Map();
    /** Jobs first seen on the stream, oldest first; `liveHead` skips evicted ones. */
    this.live = [];
    this.liveHead = 0;
    /** Jobs from API pages, in the API's order (most recently updated first). */
    this.history = [];
    /** The `nextCursor` of the last page loaded: null when there is no more. */
    this.cursor = null;
    /** Whether jobs were dropped to bound memory (the list no longer reaches its end). */
    this.trimmed = false;
    this.stateCounts = zeroCounts();
    this.seq = 0;
    this.listed = { total: 0, counts: zeroCounts() };
    this.jobsChanged = true;
  }

  /** Record that `kind` reflects every stream entry up to `streamId`. */
  setAsOf(kind, streamId) {
    const parsed = parseId(streamId) || [0, 0];
    this.asOf[kind] = { id: streamId || "0-0", parsed };
  }

  /** Where to open the stream: the oldest point some kind is up to date with. */
  resumeId() {
    let oldest = null;
    for (const kind of KINDS) {
      const at = this.asOf[kind];
      if (at && (!oldest || compareIds(at.parsed, oldest.parsed) < 0)) oldest = at;
    }
    return oldest ? oldest.id : null;
  }

  /**
   * Take what the API answered: a first page of jobs ({data, nextCursor, streamId}),
   * the workers and the queues ({data, streamId}); any may be missing.
   * The jobs are the first page for `filter` (default: the list's filter). With
   * `baseline`, entries up to these snapshots do not count as events received.
   */
  load({ jobs, workers, queues }, { filter = null, baseline = false } = {}) {
    const ids = [];
    if (jobs) {
      this.resetJobs(filter || this.filter);
      this.appendPage(jobs);
      this.setAsOf("job", jobs.streamId);
      ids.push(this.asOf.job);
    }
    if (workers) {
      this.workers = new Map();
      this.byExternalId = new Map();
      for (const w of workers.data || []) {
        if (!w || typeof w !== "object") continue;
        const ms = parseTime(w.timestamp) ?? 0;
        // An expired worker is kept as it last reported: the page applies the expiry itself.
        const data = w.expired === true && typeof w.reportedState === "string" ? { ...w, state: w.reportedState } : w;
        this.applyWorker(data.state === "offline" ? WORKER_STATE_CHANGE : WORKER_HEARTBEAT, ms, data);
      }
      this.workersChanged = true;
      this.setAsOf("worker", workers.streamId);
      ids.push(this.asOf.worker);
    }
    if (queues) {
      const before = this.queues;
      this.queues = new Map();
      for (const q of queues.data || []) {
        if (!q || typeof q !== "object" || typeof q.name !== "string") continue;
        const known = before.get(q.name); // keep its sparkline
        if (known) this.queues.set(q.name, known);
        this.applyQueue(parseTime(q.timestamp) ?? Date.now(), q);
      }
      this.queuesChanged = true;
      this.setAsOf("queue", queues.streamId);
      ids.push(this.asOf.queue);
    }
    if (baseline && ids.length) {
      let newest = ids[0];
      for (const at of ids) if (compareIds(at.parsed, newest.parsed) > 0) newest = at;
      this.lastId = newest.id;
      this.lastParsed = newest.parsed;
    }
    this.version++;
  }

  /**
   * Append a page of jobs from the API below what the list holds. A job the list
   * already has is skipped: what the list has is as new or newer (it came on the
   * stream after the page was read). Returns how many jobs were added.
   */
  appendPage(page) {
    let added = 0;
    for (const d of page.data || []) {
      if (!d || typeof d !== "object") continue;
      const key = typeof d.id === "string" && d.id ? d.id : d.externalId;
      if (typeof key !== "string" || !key || this.jobs.has(key)) continue;
      const job = this.newJob(key);
      this.history.push(job);
      this.fill(job, d, parseTime(d.updatedAt) ?? 0);
      added++;
    }
    this.cursor = typeof page.nextCursor === "string" && page.nextCursor ? page.nextCursor : null;
    if (page.counts) this.setCounts(page.counts, page.streamId);
    this.evict();
    this.jobsChanged = true;
    return added;
  }

  /**
   * Apply one stream event. Returns whether anything changed.
   * @param {string} type SSE event name
   * @param {string} id SSE id ("" when the event has none)
   * @param {any} data parsed JSON
   */
  apply(type, id, data) {
    const parsed = parseId(id);
    if (!parsed || !data || typeof data !== "object") return false;
    const kind = kindOf(type);
    const fresh = !this.lastParsed || compareIds(parsed, this.lastParsed) > 0;
    let changed = false;
    const at = kind ? this.asOf[kind] : null;
    if (kind && (!at || compareIds(parsed, at.parsed) > 0)) {
      const ms = parsed[0];
      if (kind === "job") changed = this.applyJob(id, parsed, ms, data);
      else if (kind === "worker") changed = this.applyWorker(type, ms, data);
      else changed = this.applyQueue(ms, data);
    }
    // Events come in id order: every kind now reflects everything up to this one.
    for (const k of KINDS) {
      const a = this.asOf[k];
      if (!a || compareIds(parsed, a.parsed) > 0) this.asOf[k] = { id, parsed };
    }
    if (!fresh) {
      if (!changed) this.duplicates++;
      return changed;
    }
    this.lastId = id;
    this.lastParsed = parsed;
    this.eventCount++;
    const sec = Math.floor(parsed[0] / 1000);
    this.buckets.set(sec, (this.buckets.get(sec) || 0) + 1);
    this.version++;
    return true;
  }

  newJob(key) {
    const job = { id: key, state: "unknown", seq: this.seq++, v: 0, lastId: null, lastParsed: null };
    for (const f of JOB_FIELDS) job[f] = null;
    job.activeMs = null;
    job.finishedMs = null;
    job.updatedMs = null;
    job.age = null;
    job.m = null;
    this.jobs.set(key, job);
    this.stateCounts.unknown++;
    return job;
  }

  applyJob(id, parsed, ms, d) {
    const key = typeof d.id === "string" && d.id ? d.id : d.externalId;
    if (typeof key !== "string" || !key) return false;
    let job = this.jobs.get(key);
    if (job && job.lastParsed && compareIds(parsed, job.lastParsed) <= 0) return false;
    const to = JOB_STATES.includes(d.state) ? d.state : "unknown";
    if (job && isLate(job, eventAge(d))) {
      // Older than what the job shows (another process's event, arrived late):
      // the job stays as of its latest event, as the server's index keeps it.
      job.lastId = id;
      job.lastParsed = parsed;
      return false;
    }
    this.countEvent(parsed, !!job, job ? job.state : "", to);
    if (!job) {
      // Not in the list: it joins (on top) only when the list's filter wants it.
      if (!matchesFilter(this.filter, filterFields(key, d))) return false;
      job = this.newJob(key);
      this.live.push(job);
      this.evict();
    }
    this.fill(job, d, ms);
    job.lastId = id;
    job.lastParsed = parsed;
    return true;
  }

  /** Merge one job's data (an event's, or the API's) into the list's job. */
  fill(job, d, ms) {
    for (const f of JOB_FIELDS) {
      if (d[f] !== undefined && d[f] !== null) job[f] = d[f];
    }
    const state = JOB_STATES.includes(d.state) ? d.state : "unknown";
    const when = parseTime(d.timestamp) ?? ms;
    if (state !== job.state) {
      this.stateCounts[job.state]--;
      this.stateCounts[state]++;
      job.state = state;
    }
    if (state === "active") {
      job.activeMs = when;
      job.finishedMs = null;
    } else if (FINISHED.has(state)) {
      job.finishedMs = when;
    } else {
      job.finishedMs = null;
    }
    job.updatedMs = when;
    job.age = eventAge(d);
    job.m = filterFields(job.id, d);
    job.v++;
    this.jobsChanged = true;
  }

  /**
   * Keep memory bounded: past maxJobs, drop jobs from the bottom of the list (the
   * oldest pages first). The list then no longer reaches the end of the history.
   */
  evict() {
    while (this.jobs.size > this.maxJobs) {
      let old = null;
      if (this.history.length) old = this.history.pop();
      else {
        old = this.live[this.liveHead];
        this.live[this.liveHead] = undefined;
        this.liveHead++;
      }
      if (old && this.jobs.get(old.id) === old) {
        this.jobs.delete(old.id);
        this.stateCounts[old.state]--;
      }
      this.trimmed = true;
      this.cursor = null;
    }
    if (this.liveHead > 4096 && this.liveHead * 2 > this.live.length) {
      this.live = this.live.slice(this.liveHead);
      this.liveHead = 0;
    }
  }

  /** Job duration in ms for finished jobs, or null. */
  static duration(job) {
    if (!FINISHED.has(job.state)) return null;
    const started = parseTime(job.startedAt) ?? job.activeMs;
    const finished = parseTime(job.finishedAt) ?? job.finishedMs;
    if (started == null || finished == null || finished < started) return null;
    return finished - started;
  }

  applyWorker(type, ms, d) {
    const key = typeof d.id === "string" && d.id ? d.id : d.externalId || d.hostname;
    if (typeof key !== "string" || !key) return false;
    let w = this.workers.get(key);
    if (!w) {
      w = { id: key, externalId: null, hostname: null, state: "online", activeJobs: null, concurrency: null, queues: null, pool: null, processed: null, reservedJobs: null, registered: null, lastHeartbeatMs: null, seenMs: null, changedMs: ms, v: 0 };
      this.workers.set(key, w);
    }
    if (typeof d.externalId === "string" && d.externalId) {
      w.externalId = d.externalId;
      this.byExternalId.set(d.externalId, w);
    }
    if (typeof d.hostname === "string" && d.hostname) w.hostname = d.hostname;
    if (typeof d.state === "string" && d.state) {
      if (d.state !== w.state) w.changedMs = ms;
      w.state = d.state;
    }
    if (Number.isFinite(d.activeJobs)) w.activeJobs = d.activeJobs;
    if (Number.isFinite(d.concurrency)) w.concurrency = d.concurrency;
    if (Array.isArray(d.queues)) w.queues = d.queues;
    // The worker's detail (docs/api.md, worker payload), as its latest event says it.
    if (typeof d.pool === "string" && d.pool) w.pool = d.pool;
    if (Number.isFinite(d.processed)) w.processed = d.processed;
    if (Number.isFinite(d.reservedJobs)) w.reservedJobs = d.reservedJobs;
    if (Array.isArray(d.registered)) w.registered = d.registered;
    w.seenMs = parseTime(d.timestamp) ?? ms; // the latest event's time: what liveness is decided on
    if (type === WORKER_HEARTBEAT) w.lastHeartbeatMs = parseTime(d.timestamp) ?? ms;
    else if (w.lastHeartbeatMs == null) w.lastHeartbeatMs = parseTime(d.timestamp) ?? ms;
    if (w.state === "offline") w.activeJobs = 0;
    w.v++;
    this.workersChanged = true;
    return true;
  }

  /** Set the worker expiry (seconds, from GET /api/config); ignored unless a positive number. */
  setWorkerExpirySeconds(n) {
    if (Number.isFinite(n) && n > 0) {
      this.workerExpiryMs = n * 1000;
      this.workersChanged = true;
    }
  }

  /** {state, expired, silentMs} of worker `w` at server time `nowMs` (see workerStatus). */
  workerStatus(w, nowMs) {
    return workerStatus(w, nowMs, this.workerExpiryMs);
  }

  /** The worker whose externalId (a job's `workerId`) is `externalId`, or null. */
  workerByExternalId(externalId) {
    const w = this.byExternalId.get(externalId);
    if (w && this.workers.get(w.id) === w) return w;
    for (const v of this.workers.values()) if (v.externalId === externalId) return v;
    return null;
  }

  /**
   * Whether a job is lost at server time `nowMs`: it is active on, or waiting
   * reserved by (queued/scheduled with a workerId), a worker that is offline or
   * expired. The job API's rule (sluice/liveness.py `lost`).
   */
  jobLost(job, nowMs) {
    if (!job.workerId) return false;
    if (job.state !== "active" && job.state !== "queued" && job.state !== "scheduled") return false;
    const w = this.workerByExternalId(job.workerId);
    return w != null && this.workerStatus(w, nowMs).state === "offline";
  }

  applyQueue(ms, d) {
    if (typeof d.name !== "string" || !d.name) return false;
    let q = this.queues.get(d.name);
    if (!q) {
      q = { name: d.name, depth: 0, consumers: null, points: [], v: 0 };
      this.queues.set(d.name, q);
    }
    if (Number.isFinite(d.depth)) q.depth = d.depth;
    if (Number.isFinite(d.consumers)) q.consumers = d.consumers;
    const pts = q.points;
    const last = pts[pts.length - 1];
    if (last && ms - last[0] < 1000) last[1] = q.depth; // one point per second is plenty
    else pts.push([ms, q.depth]);
    while (pts.length > SPARK_MAX_POINTS || (pts.length > 1 && ms - pts[0][0] > SPARK_WINDOW_MS)) pts.shift();
    q.updatedMs = Math.max(q.updatedMs || 0, ms);
    q.v++;
    this.queuesChanged = true;
    return true;
  }

  /**
   * Events per second over the last `windowS` complete seconds, in server time
   * (stream ids carry Redis's clock, so a burst after a reconnect is not a spike).
   */
  rate(nowMs, windowS = 5) {
    const nowS = Math.floor(nowMs / 1000);
    let sum = 0;
    for (let s = nowS - windowS; s < nowS; s++) sum += this.buckets.get(s) || 0;
    for (const s of this.buckets.keys()) if (s < nowS - RATE_WINDOW_S) this.buckets.delete(s);
    return sum / windowS;
  }

  /**
   * Per-second event counts (oldest first) for the rate sparkline: the last n complete
   * seconds, or fewer when the page has not seen that much yet.
   */
  rateSeries(nowMs, n = 60) {
    const nowS = Math.floor(nowMs / 1000);
    let start = nowS - n;
    let first = Infinity;
    for (const s of this.buckets.keys()) if (s >= start && s < first) first = s;
    if (first !== Infinity) start = Math.max(start, Math.min(first, nowS - 10));
    const out = [];
    for (let s = start; s < nowS; s++) out.push([s * 1000, this.buckets.get(s) || 0]);
    return out;
  }

  /**
   * The first `limit` jobs of the list that match its filter (a job may have changed
   * out of it since it was listed), the number matching in all, and per state.
   */
  visibleJobs(limit) {
    const f = this.filter;
    const filtered = isFiltered(f);
    const rows = [];
    let total = 0;
    const counts = filtered ? zeroCounts() : { ...this.stateCounts };
    const visit = (job) => {
      if (!job) return;
      if (filtered) {
        if (!matchesFilter(f, job.m)) return;
        counts[job.state]++;
      }
      total++;
      if (rows.length < limit) rows.push(job);
    };
    // Unfiltered, the totals are known: stop at `limit`. Filtered, count them all.
    const done = () => !filtered && rows.length >= limit;
    for (let i = this.live.length - 1; i >= this.liveHead && !done(); i--) visit(this.live[i]);
    for (let i = 0; i < this.history.length && !done(); i++) visit(this.history[i]);
    if (!filtered) total = this.jobs.size;
    this.listed = { total, counts };
    return { rows, total, counts };
  }
}
