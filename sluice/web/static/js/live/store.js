// The live view's state, built only from stream events. No DOM here.
//
// Every event that carries an SSE id is applied at most once: the store keeps the
// last entry id it applied (events arrive in id order, on a replay and on a resume
// alike) and each job keeps the id of the last event applied to it, so a replay
// after a reconnect never doubles a row or the event count.

import { compareIds, parseId } from "./ids.js";
import { parseTime } from "../format.js";

import { JOB_STATES, JOB_STATE_CHANGE, QUEUE_SNAPSHOT, WORKER_HEARTBEAT, WORKER_STATE_CHANGE } from "../contract.js";

export { JOB_STATES };
export const FINISHED = new Set(["completed", "failed", "cancelled"]);

const JOB_FIELDS = [
  "externalId", "name", "queue", "workerId", "attempt", "maxRetries", "progress",
  "error", "createdAt", "startedAt", "finishedAt",
];
const SPARK_WINDOW_MS = 5 * 60 * 1000;
const SPARK_MAX_POINTS = 300;
const RATE_WINDOW_S = 120;

export class Store {
  constructor({ maxJobs = 20000 } = {}) {
    this.maxJobs = maxJobs;
    this.reset();
  }

  reset() {
    /** @type {Map<string, any>} */
    this.jobs = new Map();
    /** Jobs in first-seen order (oldest first); `orderHead` skips evicted ones. */
    this.order = [];
    this.orderHead = 0;
    this.stateCounts = Object.fromEntries(JOB_STATES.map((s) => [s, 0]));
    /** @type {Map<string, any>} */
    this.workers = new Map();
    /** @type {Map<string, any>} */
    this.queues = new Map();
    this.lastId = null; // string
    this.lastParsed = null; // [ms, seq]
    this.eventCount = 0;
    this.duplicates = 0;
    this.buckets = new Map(); // second -> events appended in that second (server time)
    this.seq = 0;
    this.version = 0;
    this.jobsChanged = true;
    this.workersChanged = true;
    this.queuesChanged = true;
  }

  /** The id to resume from ("0" replays the whole retained history). */
  resumeId() {
    return this.lastId || "0";
  }

  /**
   * Apply one stream event. Returns false for a duplicate (already applied).
   * @param {string} type SSE event name
   * @param {string} id SSE id ("" when the event has none)
   * @param {any} data parsed JSON
   */
  apply(type, id, data) {
    const parsed = parseId(id);
    if (!parsed || !data || typeof data !== "object") return false;
    if (this.lastParsed && compareIds(parsed, this.lastParsed) <= 0) {
      this.duplicates++;
      return false;
    }
    let applied = true;
    const ms = parsed[0];
    if (type === JOB_STATE_CHANGE) applied = this.applyJob(id, parsed, ms, data);
    else if (type === WORKER_HEARTBEAT || type === WORKER_STATE_CHANGE) this.applyWorker(type, ms, data);
    else if (type === QUEUE_SNAPSHOT) this.applyQueue(ms, data);
    this.lastId = id;
    this.lastParsed = parsed;
    if (!applied) {
      this.duplicates++;
      return false;
    }
    this.eventCount++;
    const sec = Math.floor(ms / 1000);
    this.buckets.set(sec, (this.buckets.get(sec) || 0) + 1);
    this.version++;
    return true;
  }

  applyJob(id, parsed, ms, d) {
    const key = typeof d.id === "string" && d.id ? d.id : d.externalId;
    if (typeof key !== "string" || !key) return false;
    let job = this.jobs.get(key);
    if (job && job.lastParsed && compareIds(parsed, job.lastParsed) <= 0) return false;
    if (!job) {
      job = { id: key, state: "unknown", seq: this.seq++, firstMs: ms, v: 0 };
      for (const f of JOB_FIELDS) job[f] = null;
      job.activeMs = null;
      job.finishedMs = null;
      this.jobs.set(key, job);
      this.order.push(job);
      this.stateCounts.unknown++;
      this.evict();
    }
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
    job.lastId = id;
    job.lastParsed = parsed;
    job.v++;
    this.jobsChanged = true;
    return true;
  }

  /** Keep memory bounded: forget the oldest jobs past maxJobs. */
  evict() {
    while (this.jobs.size > this.maxJobs) {
      const old = this.order[this.orderHead];
      this.order[this.orderHead] = undefined;
      this.orderHead++;
      if (old && this.jobs.get(old.id) === old) {
        this.jobs.delete(old.id);
        this.stateCounts[old.state]--;
      }
    }
    if (this.orderHead > 4096 && this.orderHead * 2 > this.order.length) {
      this.order = this.order.slice(this.orderHead);
      this.orderHead = 0;
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
    if (typeof key !== "string" || !key) return;
    let w = this.workers.get(key);
    if (!w) {
      w = { id: key, hostname: null, state: "online", activeJobs: null, concurrency: null, queues: null, lastHeartbeatMs: null, changedMs: ms, v: 0 };
      this.workers.set(key, w);
    }
    if (typeof d.hostname === "string" && d.hostname) w.hostname = d.hostname;
    if (typeof d.state === "string" && d.state) {
      if (d.state !== w.state) w.changedMs = ms;
      w.state = d.state;
    }
    if (Number.isFinite(d.activeJobs)) w.activeJobs = d.activeJobs;
    if (Number.isFinite(d.concurrency)) w.concurrency = d.concurrency;
    if (Array.isArray(d.queues)) w.queues = d.queues;
    if (type === WORKER_HEARTBEAT) w.lastHeartbeatMs = parseTime(d.timestamp) ?? ms;
    else if (w.lastHeartbeatMs == null && w.state !== "offline") w.lastHeartbeatMs = parseTime(d.timestamp) ?? ms;
    if (w.state === "offline") w.activeJobs = 0;
    w.v++;
    this.workersChanged = true;
  }

  applyQueue(ms, d) {
    if (typeof d.name !== "string" || !d.name) return;
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
    q.updatedMs = ms;
    q.v++;
    this.queuesChanged = true;
  }

  /**
   * Events per second over the last `windowS` complete seconds, in server time
   * (stream ids carry Redis's clock, so a replayed backlog does not count as a burst).
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
   * seconds, or fewer when the page has not seen that much history yet.
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
   * Up to `limit` jobs matching the filters, newest first, and the number matching in total.
   * @param {{state: string, search: string}} filter
   */
  visibleJobs(filter, limit) {
    const needle = filter.search ? filter.search.toLowerCase() : "";
    const state = filter.state || "";
    const rows = [];
    let total = 0;
    if (!needle && !state) total = this.jobs.size;
    else if (!needle) total = this.stateCounts[state] || 0;
    const counting = needle !== "";
    for (let i = this.order.length - 1; i >= this.orderHead; i--) {
      const job = this.order[i];
      if (!job) continue;
      if (state && job.state !== state) continue;
      if (needle && !matches(job, needle)) continue;
      if (counting) total++;
      if (rows.length < limit) rows.push(job);
      else if (!counting) break;
    }
    return { rows, total };
  }
}

function matches(job, needle) {
  if (job.name && String(job.name).toLowerCase().includes(needle)) return true;
  return job.externalId != null && String(job.externalId).toLowerCase().includes(needle);
}
