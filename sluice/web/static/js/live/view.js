// DOM rendering of the live view, called from an animation frame (at most every 100 ms).
//
// The jobs table is a keyed row map (job id -> row element): each redraw computes the
// visible rows (newest first, filtered, capped) and moves, inserts or removes only
// the rows that changed place; a row's cells are written only when its job changed.
// Untrusted text only ever goes through textContent / setAttribute.

import { JOB_STATES, Store } from "./store.js";
import { drawSparkline } from "./sparkline.js";
import { formatAgo, formatClock, formatDuration, formatInt, formatRate } from "../format.js";

export const MAX_ROWS = 500;
const MAX_WORKERS = 200;
const MAX_QUEUES = 100;
const STATE_LABEL = {
  unknown: "Unknown", queued: "Queued", scheduled: "Scheduled", active: "Active",
  completed: "Completed", failed: "Failed", retrying: "Retrying", cancelled: "Cancelled",
};
const WORKER_ORDER = { busy: 0, online: 1, idle: 2, offline: 3 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/** Write text only when it changed (no DOM work for unchanged cells). */
function setText(node, text) {
  const value = text == null ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function badge(state) {
  const b = el("span", `badge badge-${state}`, STATE_LABEL[state] || state);
  return b;
}

export class JobsTable {
  constructor(root) {
    this.body = root.querySelector("[data-jobs-body]");
    this.empty = root.querySelector("[data-jobs-empty]");
    this.more = root.querySelector("[data-jobs-more]");
    this.chips = root.querySelector("[data-state-chips]");
    /** @type {Map<string, HTMLDivElement>} */
    this.rows = new Map();
    this.filter = { state: "", search: "" };
    this.filterChanged = true;
    this.chipEls = new Map();
    this.buildChips();
  }

  buildChips() {
    for (const state of ["", ...JOB_STATES]) {
      const b = el("button", `chip-btn${state ? ` chip-btn-${state}` : ""}`);
      b.type = "button";
      b.dataset.stateFilter = state || "all";
      b.setAttribute("aria-pressed", state === this.filter.state ? "true" : "false");
      const label = el("span", "chip-label", state ? STATE_LABEL[state] : "All");
      const count = el("span", "chip-count", "0");
      b.append(label, count);
      b.addEventListener("click", () => this.setState(state));
      this.chips.append(b);
      this.chipEls.set(state, { button: b, count });
    }
  }

  setState(state) {
    if (this.filter.state === state) state = "";
    this.filter.state = state;
    for (const [s, c] of this.chipEls) c.button.setAttribute("aria-pressed", s === state ? "true" : "false");
    this.filterChanged = true;
  }

  setSearch(text) {
    this.filter.search = text.trim();
    this.filterChanged = true;
  }

  clear() {
    this.body.replaceChildren();
    this.rows.clear();
    this.filterChanged = true;
  }

  render(store) {
    if (!store.jobsChanged && !this.filterChanged) return;
    store.jobsChanged = false;
    this.filterChanged = false;
    const { rows, total } = store.visibleJobs(this.filter, MAX_ROWS);
    // Reconcile: walk the desired order, reusing keyed rows in place.
    const keep = new Set();
    let cursor = this.body.firstChild;
    for (const job of rows) {
      keep.add(job.id);
      let tr = this.rows.get(job.id);
      if (!tr) {
        tr = this.createRow(job);
        this.rows.set(job.id, tr);
      } else if (tr._v !== job.v) {
        this.fillRow(tr, job);
      }
      if (tr === cursor) cursor = cursor.nextSibling;
      else this.body.insertBefore(tr, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
    for (const [id, tr] of this.rows) {
      if (!keep.has(id)) {
        if (tr.parentNode) tr.remove();
        this.rows.delete(id);
      }
    }
    const filtered = this.filter.state || this.filter.search;
    this.empty.hidden = rows.length > 0;
    if (!rows.length) {
      setText(this.empty.querySelector("strong"), filtered && store.jobs.size ? "No jobs match these filters." : "Waiting for jobs…");
    }
    const hidden = total - rows.length;
    setText(this.more, hidden > 0 ? `Showing the newest ${formatInt(rows.length)} of ${formatInt(total)} jobs · ${formatInt(hidden)} more not shown` : "");
    this.more.dataset.hiddenCount = String(Math.max(0, hidden));
    setText(this.chipEls.get("").count, formatInt(store.jobs.size));
    for (const s of JOB_STATES) setText(this.chipEls.get(s).count, formatInt(store.stateCounts[s]));
  }

  createRow(job) {
    // A div grid rather than <tr>: rows can then skip rendering while off screen
    // (content-visibility), which keeps relayout cheap with 500 rows and 1,000 events/s.
    const tr = el("div", "job-row");
    tr.setAttribute("role", "row");
    tr.dataset.jobId = job.id;
    if (job.externalId != null) tr.dataset.externalId = String(job.externalId);
    const cell = (cls) => {
      const c = el("div", cls);
      c.setAttribute("role", "cell");
      return c;
    };
    const stateTd = cell("c-state");
    const nameTd = cell("c-name");
    const name = el("div", "job-name");
    const sub = el("div", "job-sub mono");
    const err = el("div", "job-error");
    nameTd.append(name, sub, err);
    tr._cells = {
      state: stateTd,
      name,
      sub,
      err,
      queue: cell("c-queue"),
      worker: cell("c-worker mono"),
      attempt: cell("c-attempt num"),
      duration: cell("c-duration num"),
      updated: cell("c-updated num"),
    };
    const c = tr._cells;
    tr.append(stateTd, nameTd, c.queue, c.worker, c.attempt, c.duration, c.updated);
    this.fillRow(tr, job);
    return tr;
  }

  fillRow(tr, job) {
    const c = tr._cells;
    if (tr._state !== job.state) {
      c.state.replaceChildren(badge(job.state));
      tr.dataset.state = job.state;
      tr._state = job.state;
    }
    setText(c.name, job.name || "(unnamed)");
    if (job.name && c.name.title !== job.name) c.name.title = job.name;
    setText(c.sub, job.externalId != null ? job.externalId : job.id);
    const showError = (job.state === "failed" || job.state === "retrying") && job.error;
    const errText = showError ? String(job.error) : "";
    setText(c.err, errText.length > 300 ? `${errText.slice(0, 300)}…` : errText);
    if (showError && c.err.title !== errText) c.err.title = errText.slice(0, 2000);
    c.err.hidden = !showError;
    setText(c.queue, job.queue || "—");
    setText(c.worker, job.workerId || "—");
    const attempt = job.attempt != null ? (job.maxRetries != null ? `${job.attempt} / ${job.maxRetries + 1}` : job.attempt) : "—";
    setText(c.attempt, attempt);
    const d = Store.duration(job);
    setText(c.duration, d == null ? (job.state === "active" ? "running" : "—") : formatDuration(d));
    setText(c.updated, formatClock(job.updatedMs));
    tr._v = job.v;
  }
}

export class WorkersPanel {
  constructor(root) {
    this.list = root.querySelector("[data-workers]");
    this.empty = root.querySelector("[data-workers-empty]");
    this.count = root.querySelector("[data-workers-count]");
    /** @type {Map<string, HTMLLIElement>} */
    this.items = new Map();
  }

  clear() {
    this.list.replaceChildren();
    this.items.clear();
  }

  /** Structure changes only when workers changed; "N s ago" is refreshed every call. */
  render(store, nowMs) {
    const workers = [...store.workers.values()];
    workers.sort((a, b) => (WORKER_ORDER[a.state] ?? 1) - (WORKER_ORDER[b.state] ?? 1) || String(a.hostname || a.id).localeCompare(String(b.hostname || b.id)));
    const shown = workers.slice(0, MAX_WORKERS);
    if (store.workersChanged) {
      store.workersChanged = false;
      let cursor = this.list.firstChild;
      const keep = new Set();
      for (const w of shown) {
        keep.add(w.id);
        let li = this.items.get(w.id);
        if (!li) {
          li = this.createItem(w);
          this.items.set(w.id, li);
        }
        if (li._v !== w.v) this.fillItem(li, w);
        if (li === cursor) cursor = cursor.nextSibling;
        else this.list.insertBefore(li, cursor);
      }
      for (const [id, li] of this.items) {
        if (!keep.has(id)) {
          li.remove();
          this.items.delete(id);
        }
      }
      this.empty.hidden = shown.length > 0;
      const online = workers.filter((w) => w.state !== "offline").length;
      setText(this.count, workers.length ? `${online} online · ${workers.length - online} offline` : "");
    }
    for (const w of shown) {
      const li = this.items.get(w.id);
      if (li) setText(li._cells.ago, w.lastHeartbeatMs == null ? "no heartbeat yet" : `last heartbeat ${formatAgo(nowMs - w.lastHeartbeatMs)}`);
    }
  }

  createItem(w) {
    const li = el("li", "worker");
    li.dataset.workerId = w.id;
    const top = el("div", "worker-top");
    const dot = el("span", "worker-dot");
    dot.setAttribute("aria-hidden", "true");
    const host = el("span", "worker-host mono");
    const state = el("span", "worker-state");
    top.append(dot, host, state);
    const bottom = el("div", "worker-bottom muted small");
    const jobs = el("span", "worker-jobs");
    const ago = el("span", "worker-ago");
    bottom.append(jobs, ago);
    li.append(top, bottom);
    li._cells = { host, state, jobs, ago };
    return li;
  }

  fillItem(li, w) {
    const c = li._cells;
    setText(c.host, w.hostname || w.id);
    if (w.hostname && w.hostname !== w.id) c.host.title = w.id;
    setText(c.state, w.state);
    li.dataset.state = w.state;
    li.classList.toggle("is-offline", w.state === "offline");
    const active = w.activeJobs == null ? "—" : formatInt(w.activeJobs);
    setText(c.jobs, w.concurrency != null ? `${active} / ${w.concurrency} active` : `${active} active`);
    li._v = w.v;
  }
}

export class QueuesPanel {
  constructor(root) {
    this.list = root.querySelector("[data-queues]");
    this.empty = root.querySelector("[data-queues-empty]");
    this.items = new Map();
  }

  clear() {
    this.list.replaceChildren();
    this.items.clear();
  }

  render(store, nowMs) {
    if (!store.queuesChanged && !this.dueRedraw(nowMs)) return;
    store.queuesChanged = false;
    this.lastDraw = nowMs;
    const queues = [...store.queues.values()].sort((a, b) => b.depth - a.depth || a.name.localeCompare(b.name)).slice(0, MAX_QUEUES);
    let cursor = this.list.firstChild;
    const keep = new Set();
    for (const q of queues) {
      keep.add(q.name);
      let li = this.items.get(q.name);
      if (!li) {
        li = this.createItem(q);
        this.items.set(q.name, li);
      }
      this.fillItem(li, q, nowMs);
      if (li === cursor) cursor = cursor.nextSibling;
      else this.list.insertBefore(li, cursor);
    }
    for (const [name, li] of this.items) {
      if (!keep.has(name)) {
        li.remove();
        this.items.delete(name);
      }
    }
    this.empty.hidden = queues.length > 0;
  }

  /** Sparklines slide with time even without new snapshots: redraw every 5 s. */
  dueRedraw(nowMs) {
    return this.items.size > 0 && (!this.lastDraw || nowMs - this.lastDraw > 5000);
  }

  createItem(q) {
    const li = el("li", "queue");
    li.dataset.queueName = q.name;
    const name = el("span", "queue-name mono");
    const depth = el("span", "queue-depth num");
    const consumers = el("span", "queue-consumers muted small");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 120 28");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    svg.append(title);
    const info = el("div", "queue-info");
    info.append(name, consumers);
    li.append(info, svg, depth);
    li._cells = { name, depth, consumers, svg, title };
    return li;
  }

  fillItem(li, q, nowMs) {
    const c = li._cells;
    setText(c.name, q.name);
    setText(c.depth, formatInt(q.depth));
    c.depth.setAttribute("aria-label", `depth ${q.depth}`);
    setText(c.consumers, q.consumers == null ? "" : `${formatInt(q.consumers)} consumer${q.consumers === 1 ? "" : "s"}`);
    if (li._v !== q.v || li._drawnAt == null || nowMs - li._drawnAt > 5000) {
      const xMax = Math.max(nowMs, q.updatedMs || 0);
      const pts = q.points.slice();
      if (pts.length) pts.push([xMax, q.depth]);
      // Window: the last 5 minutes, or less while the page has seen less (at least 1 min).
      const first = pts.length ? pts[0][0] : xMax;
      const xMin = Math.max(xMax - 5 * 60 * 1000, Math.min(first, xMax - 60 * 1000));
      drawSparkline(c.svg, pts, { xMin, xMax });
      setText(c.title, `Depth of ${q.name} over the last 5 minutes, now ${q.depth}`);
      li._v = q.v;
      li._drawnAt = nowMs;
    }
  }
}

export class Stats {
  constructor(root) {
    this.nodes = {};
    for (const n of root.querySelectorAll("[data-stat]")) this.nodes[n.dataset.stat] = n;
    this.spark = root.querySelector("[data-rate-spark]");
  }

  render(store, nowMs) {
    const n = this.nodes;
    setText(n.rate, formatRate(store.rate(nowMs)));
    setText(n.events, formatInt(store.eventCount));
    n.events.dataset.count = String(store.eventCount);
    setText(n.jobs, formatInt(store.jobs.size));
    setText(n.active, formatInt(store.stateCounts.active));
    setText(n.failed, formatInt(store.stateCounts.failed));
    let online = 0;
    for (const w of store.workers.values()) if (w.state !== "offline") online++;
    setText(n.workers, formatInt(online));
    setText(n["workers-total"], formatInt(store.workers.size));
    let depth = 0;
    for (const q of store.queues.values()) depth += q.depth;
    setText(n.depth, formatInt(depth));
    setText(n.queues, formatInt(store.queues.size));
    drawSparkline(this.spark, store.rateSeries(nowMs, 60));
  }
}

const INDICATOR_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  stale: "Stale — no heartbeat",
  "signed-out": "Signed out",
  gone: "Connection not found",
};

export function showIndicator(root, status) {
  const ind = root.querySelector("[data-indicator]");
  ind.dataset.state = status;
  setText(ind.querySelector("[data-indicator-text]"), INDICATOR_TEXT[status] || status);
}
