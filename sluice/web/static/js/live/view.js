// DOM rendering of the live view, called from an animation frame (at most every 100 ms).
//
// The jobs table is a keyed row map (job id -> row element): each redraw computes the
// visible rows (newest first, filtered, capped) and moves, inserts or removes only
// the rows that changed place; a row's cells are written only when its job changed.
// Untrusted text only ever goes through textContent / setAttribute.

import { JOB_STATES, Store } from "./store.js";
import { drawSparkline } from "./sparkline.js";
import { formatAgo, formatClock, formatDuration, formatInt, formatRate } from "../format.js";
import { viewUrl } from "./query.js";

/** Rows shown at first; "Load more" shows (or fetches) this many more each time. */
export const MAX_ROWS = 500;
export const PAGE_SIZE = 100;
const MAX_WORKERS = 200;
const MAX_QUEUES = 100;
export const STATE_LABEL = {
  unknown: "Unknown", queued: "Queued", scheduled: "Scheduled", active: "Active",
  completed: "Completed", failed: "Failed", retrying: "Retrying", cancelled: "Cancelled",
};
const WORKER_ORDER = { busy: 0, online: 1, idle: 2, offline: 3 };

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/** Write text only when it changed (no DOM work for unchanged cells). */
export function setText(node, text) {
  const value = text == null ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function badge(state) {
  const b = el("span", `badge badge-${state}`, STATE_LABEL[state] || state);
  return b;
}

/** A same-page link that changes the view's filters (followed by the page itself). */
export function navLink(className, text, href) {
  const a = el("a", className, text);
  a.href = href;
  a.dataset.nav = "";
  return a;
}

/** Whether a click should be left to the browser (new tab, new window, download…). */
export function isModifiedClick(ev) {
  return ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey;
}

export class JobsTable {
  /**
   * @param {HTMLElement} root
   * @param {{
   *   onState: (state: string) => void,
   *   onOpen: (jobId: string, opener: HTMLElement) => void,
   *   onMore: () => void,
   *   jobHref: (jobId: string) => string,
   * }} actions
   */
  constructor(root, actions) {
    this.actions = actions;
    this.table = root.querySelector("[data-jobs-table]");
    this.body = root.querySelector("[data-jobs-body]");
    this.empty = root.querySelector("[data-jobs-empty]");
    this.more = root.querySelector("[data-jobs-more]");
    this.moreButton = root.querySelector("[data-load-more]");
    this.error = root.querySelector("[data-jobs-error]");
    this.chips = root.querySelector("[data-state-chips]");
    /** @type {Map<string, HTMLDivElement>} */
    this.rows = new Map();
    this.filter = { state: "" };
    this.filtered = false;
    this.cap = MAX_ROWS;
    this.shown = 0;
    this.hidden = 0;
    this.loading = true; // the first page is on its way
    this.busy = false; // "load more" is on its way
    this.openId = "";
    this.changed = true;
    this.chipEls = new Map();
    this.countsVersion = -1;
    this.buildChips();
    this.moreButton.addEventListener("click", () => this.actions.onMore());
    this.body.addEventListener("click", (ev) => this.onClick(ev));
  }

  buildChips() {
    for (const state of ["", ...JOB_STATES]) {
      const b = el("button", `chip-btn${state ? ` chip-btn-${state}` : ""}`);
      b.type = "button";
      b.dataset.stateFilter = state || "all";
      b.setAttribute("aria-pressed", state === this.filter.state ? "true" : "false");
      const label = state ? STATE_LABEL[state] : "All";
      const count = el("span", "chip-count");
      count.dataset.count = "";
      b.append(el("span", "chip-label", label), count);
      b._label = label;
      b._count = count;
      // Pressing the active filter again clears it.
      b.addEventListener("click", () => this.actions.onState(state === this.filter.state ? "" : state));
      this.chips.append(b);
      this.chipEls.set(state, b);
    }
  }

  /**
   * Each chip's count: the connection's jobs in that state ("All": every job),
   * whatever the filter. A screen reader hears "Failed, 95 jobs" (the count's
   * digits alone would be read as part of the label).
   */
  renderChips(store) {
    if (store.countsVersion === this.countsVersion) return;
    this.countsVersion = store.countsVersion;
    const counts = store.counts;
    for (const [state, b] of this.chipEls) {
      const n = counts ? counts[state || "total"] : null;
      const known = Number.isFinite(n);
      setText(b._count, known ? formatInt(n) : "");
      b._count.dataset.count = known ? String(n) : "";
      b._count.hidden = !known;
      const name = known ? `${b._label}, ${formatInt(n)} job${n === 1 ? "" : "s"}` : b._label;
      if (b.getAttribute("aria-label") !== name) b.setAttribute("aria-label", name);
    }
  }

  /** The list's filter changed (from the URL): show it; the rows come with the next page. */
  setFilter(filter, filtered) {
    this.filter = { ...filter };
    this.filtered = filtered;
    for (const [s, b] of this.chipEls) b.setAttribute("aria-pressed", s === filter.state ? "true" : "false");
    this.changed = true;
  }

  /** A first page is on its way (true) or has arrived (false). */
  setLoading(loading) {
    this.loading = loading;
    this.table.setAttribute("aria-busy", loading ? "true" : "false");
    if (!loading) this.cap = MAX_ROWS;
    this.changed = true;
  }

  setBusy(busy) {
    this.busy = busy;
    this.changed = true;
  }

  /** An error sentence above the table, or "" to hide it. */
  setError(message) {
    setText(this.error, message);
    this.error.hidden = !message;
  }

  /** Show `n` more rows than are shown now (they are already loaded). */
  showMore(n) {
    this.cap = Math.max(this.cap, this.shown) + n;
    this.changed = true;
  }

  /** Show at least `n` rows (when as many match). */
  showAtLeast(n) {
    this.cap = Math.max(this.cap, n);
    this.changed = true;
  }

  /** The job whose details are open ("" for none): its row is highlighted. */
  setOpen(jobId) {
    if (this.openId === jobId) return;
    const before = this.rows.get(this.openId);
    if (before) this.markOpen(before, false);
    this.openId = jobId;
    const now = this.rows.get(jobId);
    if (now) this.markOpen(now, true);
  }

  /** The link of a job's row, if it is shown. */
  rowLink(jobId) {
    const tr = this.rows.get(jobId);
    return tr ? tr._cells.link : null;
  }

  /** Mark a row lost: the worker that holds its job is offline (docs/api.md, "Lost jobs"). */
  applyLost(tr, lost) {
    if (!!tr._lost === lost) return;
    tr._lost = lost;
    tr.classList.toggle("is-lost", lost);
    if (lost) {
      tr.dataset.lost = "true";
      const tag = el("span", "lost-tag", "Lost");
      tag.title = `Its worker ${tr._job.workerId} is offline`;
      tr._cells.state.append(tag);
      tr._cells.lostTag = tag;
    } else {
      delete tr.dataset.lost;
      if (tr._cells.lostTag) tr._cells.lostTag.remove();
      tr._cells.lostTag = null;
    }
  }

  markOpen(tr, open) {
    tr.classList.toggle("is-open", open);
    if (open) tr._cells.link.setAttribute("aria-current", "true");
    else tr._cells.link.removeAttribute("aria-current");
  }

  onClick(ev) {
    const tr = ev.target instanceof Element ? ev.target.closest(".job-row") : null;
    if (!tr || !tr.dataset.jobId) return;
    const link = ev.target.closest("a");
    if (link && isModifiedClick(ev)) return; // a new tab gets the link's URL
    if (!link && String(window.getSelection() || "")) return; // selecting text, not opening
    ev.preventDefault();
    this.actions.onOpen(tr.dataset.jobId, tr._cells.link);
  }

  clear() {
    this.body.replaceChildren();
    this.rows.clear();
    this.changed = true;
  }

  render(store, nowMs) {
    this.renderChips(store);
    // Lost jobs change with time (a worker's heartbeats stop) as well as with events.
    const lostNow = (job) => (nowMs == null ? false : store.jobLost(job, nowMs));
    for (const tr of this.rows.values()) if (tr._job) this.applyLost(tr, lostNow(tr._job));
    if (!store.jobsChanged && !this.changed) return;
    store.jobsChanged = false;
    this.changed = false;
    const { rows, total } = store.visibleJobs(this.cap);
    // Reconcile: walk the desired order, reusing keyed rows in place.
    const keep = new Set();
    let cursor = this.body.firstChild;
    for (const job of rows) {
      keep.add(job.id);
      let tr = this.rows.get(job.id);
      if (!tr) {
        tr = this.createRow(job);
        this.rows.set(job.id, tr);
      } else if (tr._job !== job || tr._v !== job.v) {
        this.fillRow(tr, job);
      }
      this.applyLost(tr, lostNow(job));
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
    this.shown = rows.length;
    this.hidden = total - rows.length;
    this.renderEmpty(store, rows.length);
    this.renderFoot(store, total);
  }

  renderEmpty(store, n) {
    this.empty.hidden = n > 0;
    if (n) return;
    let title;
    let sub;
    if (this.loading) {
      title = "Loading jobs…";
      sub = "";
    } else if (this.filtered && store.cursor) {
      title = "No jobs match these filters among the newest ones.";
      sub = "Load more to search older jobs.";
    } else if (this.filtered) {
      title = "No jobs match these filters.";
      sub = "Matching jobs appear here the moment they change.";
    } else {
      title = "Waiting for jobs…";
      sub = "Job events appear here the moment they are ingested.";
    }
    setText(this.empty.querySelector("strong"), title);
    setText(this.empty.querySelector("[data-jobs-empty-sub]"), sub);
  }

  renderFoot(store, total) {
    const shown = this.shown;
    const hidden = this.hidden;
    let text = "";
    let more = "end";
    if (this.loading) {
      more = "loading";
    } else if (hidden > 0) {
      more = "hidden";
      text = `Showing the newest ${formatInt(shown)} of ${formatInt(total)} jobs · ${formatInt(hidden)} more not shown`;
    } else if (store.cursor) {
      more = "history";
      text = shown ? `Showing ${formatInt(shown)} jobs · older ones are in the history` : "";
    } else if (store.trimmed) {
      more = "trimmed";
      text = `Showing the newest ${formatInt(shown)} jobs · older ones were let go to keep this page light; reload the page to browse them`;
    } else if (shown) {
      text = `${formatInt(shown)} job${shown === 1 ? "" : "s"} · the end of the retained history`;
    }
    if (this.busy) text = text ? `${text} · loading…` : "Loading…";
    setText(this.more, text);
    this.more.dataset.hiddenCount = String(Math.max(0, hidden));
    this.more.dataset.more = more;
    const canMore = more === "hidden" || more === "history";
    this.moreButton.hidden = !canMore;
    this.moreButton.disabled = this.busy;
  }

  createRow(job) {
    // A div grid rather than <tr>: rows can then skip rendering while off screen
    // (content-visibility), which keeps relayout cheap with 500 rows and 1,000 events/s.
    const tr = el("div", "job-row");
    tr.setAttribute("role", "row");
    tr.dataset.jobId = job.id;
    const cell = (cls) => {
      const c = el("div", cls);
      c.setAttribute("role", "cell");
      return c;
    };
    const stateTd = cell("c-state");
    const nameTd = cell("c-name");
    const link = el("a", "job-name job-link");
    const sub = el("div", "job-sub mono");
    const err = el("div", "job-error");
    nameTd.append(link, sub, err);
    tr._cells = {
      state: stateTd,
      link,
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
    if (job.id === this.openId) this.markOpen(tr, true);
    return tr;
  }

  fillRow(tr, job) {
    const c = tr._cells;
    if (tr._job !== job) {
      c.link.href = this.actions.jobHref(job.id);
      tr._job = job;
    }
    if (job.externalId != null && tr.dataset.externalId !== String(job.externalId)) tr.dataset.externalId = String(job.externalId);
    if (tr._state !== job.state) {
      c.state.replaceChildren(badge(job.state));
      tr.dataset.state = job.state;
      tr._state = job.state;
      if (tr._lost) this.applyLost(tr, false); // its tag went with the old badge
    }
    setText(c.link, job.name || "(unnamed)");
    if (job.name && c.link.title !== job.name) c.link.title = job.name;
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

/**
 * The filters other than state and search (queue, task name, worker), each with a
 * button that removes it. A worker filter is the worker's view: its state and load
 * above its recent jobs; a queue filter shows the queue's depth.
 */
export class ScopeBar {
  /** @param {HTMLElement} root @param {{onRemove: (key: string) => void}} actions */
  constructor(root, actions) {
    this.node = root.querySelector("[data-scope]");
    this.actions = actions;
    this.filter = null;
    this.items = new Map();
    /** The worker's facts while a worker filter is on (else null). */
    this.workerView = null;
  }

  setFilter(filter) {
    // The same worker's view keeps its registered list open (a state link was followed).
    const wasOpen = this.workerView && this.workerView.externalId === filter.worker && this.workerView.registered.open;
    this.filter = { ...filter };
    this.node.replaceChildren();
    this.items.clear();
    const scopes = [
      ["worker", "Worker"],
      ["queue", "Queue"],
      ["name", "Task"],
    ];
    for (const [key, label] of scopes) {
      const value = filter[key];
      if (!value) continue;
      const item = el("div", `scope-item scope-${key}`);
      item.dataset.scope = key;
      const head = el("div", "scope-head");
      head.append(el("span", "scope-label", label), el("span", "scope-value mono", value));
      const remove = el("button", "btn btn-ghost btn-sm scope-remove", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove the ${label.toLowerCase()} filter ${value}`);
      remove.addEventListener("click", () => this.actions.onRemove(key));
      head.append(remove);
      const detail = el("div", "scope-detail muted small");
      detail.dataset.scopeDetail = key;
      item.append(head, detail);
      if (key === "worker") {
        this.workerView = new WorkerFacts(value, filter);
        this.workerView.registered.open = Boolean(wasOpen);
        item.append(this.workerView.node);
      }
      this.node.append(item);
      this.items.set(key, detail);
    }
    if (!this.items.has("worker")) this.workerView = null;
    this.node.hidden = this.items.size === 0;
  }

  render(store, nowMs) {
    const worker = this.items.get("worker");
    if (worker) {
      const w = store.workerByExternalId(this.filter.worker);
      let text = "No worker events seen from it.";
      if (w) {
        const status = store.workerStatus(w, nowMs);
        const active = status.expired ? "0" : w.activeJobs == null ? "—" : formatInt(w.activeJobs);
        const parts = [status.state, w.concurrency != null ? `${active} / ${w.concurrency} active` : `${active} active`];
        if (w.queues && w.queues.length) parts.push(`queues: ${w.queues.join(", ")}`);
        if (w.hostname && w.hostname !== w.externalId) parts.push(`on ${w.hostname}`);
        parts.push(heartbeatText(w, status, nowMs));
        text = parts.join(" · ");
        worker.dataset.state = status.state;
      }
      setText(worker, text);
      if (this.workerView) this.workerView.render(w, store, nowMs);
    }
    const queue = this.items.get("queue");
    if (queue) {
      const q = store.queues.get(this.filter.queue);
      let text = "No snapshot of this queue yet.";
      if (q) {
        text = `${formatInt(q.depth)} waiting`;
        if (q.consumers != null) text += ` · ${formatInt(q.consumers)} consumer${q.consumers === 1 ? "" : "s"}`;
      }
      setText(queue, text);
    }
  }
}

/**
 * The worker's view, below its summary: what its producer says of it (docs/celery.md,
 * "The worker view"): pool and size, tasks processed, active and reserved (links to
 * the worker's jobs in that state: reserved ones are its queued jobs), the queues it
 * consumes, and its registered tasks in a collapsible list. A fact nobody sent is
 * left out. Built once per filter, updated in place (a <details> stays open).
 */
class WorkerFacts {
  constructor(externalId, filter) {
    this.externalId = externalId;
    this.filter = { ...filter };
    this.node = el("div", "worker-view small");
    this.node.dataset.workerView = externalId;
    this.list = el("dl", "worker-facts");
    this.facts = {};
    const facts = [
      ["pool", "Pool"],
      ["processed", "Processed"],
      ["active", "Active"],
      ["reserved", "Reserved"],
      ["queues", "Queues"],
    ];
    for (const [key, label] of facts) {
      const dt = el("dt", "muted", label);
      const dd = el("dd", "mono");
      dd.dataset.workerFact = key;
      if (key === "active" || key === "reserved") {
        const state = key === "active" ? "active" : "queued";
        const link = navLink("worker-fact-link", "", viewUrl({ filter: { ...this.filter, state } }));
        link.title = key === "active" ? "Its active jobs" : "Its reserved jobs: received (prefetched) by this worker, not started";
        dd.append(link);
      }
      dt.hidden = dd.hidden = true;
      this.list.append(dt, dd);
      this.facts[key] = { dt, dd };
    }
    this.registered = el("details", "worker-registered");
    this.registered.dataset.workerRegistered = "";
    this.registeredSummary = el("summary", "muted");
    this.registeredList = el("ul", "worker-registered-list mono");
    this.registered.append(this.registeredSummary, this.registeredList);
    this.registered.hidden = true;
    this.registeredKey = null;
    this.node.append(this.list, this.registered);
  }

  fact(key, text) {
    const { dt, dd } = this.facts[key];
    dt.hidden = dd.hidden = text == null;
    if (text != null) setText(dd.firstElementChild || dd, text);
  }

  render(w, store, nowMs) {
    if (!w) {
      this.node.hidden = true;
      return;
    }
    this.node.hidden = false;
    const status = store.workerStatus(w, nowMs);
    const gone = status.state === "offline";
    this.fact("pool", w.pool || w.concurrency != null ? [w.pool, w.concurrency != null ? `size ${formatInt(w.concurrency)}` : null].filter(Boolean).join(" · ") : null);
    this.fact("processed", w.processed != null ? formatInt(w.processed) : null);
    this.fact("active", w.activeJobs != null ? formatInt(gone ? 0 : w.activeJobs) : null);
    this.fact("reserved", w.reservedJobs != null ? formatInt(gone ? 0 : w.reservedJobs) : null);
    this.fact("queues", w.queues && w.queues.length ? w.queues.join(", ") : null);
    const names = Array.isArray(w.registered) ? w.registered : null;
    const key = names ? names.join("\n") : null;
    if (key === this.registeredKey) return;
    this.registeredKey = key;
    this.registered.hidden = !names;
    if (!names) return;
    setText(this.registeredSummary, `Registered tasks (${formatInt(names.length)})`);
    this.registeredList.replaceChildren(
      ...names.map((name) => {
        const li = el("li");
        li.append(navLink("worker-task", name, viewUrl({ filter: { ...this.filter, state: "", name } })));
        return li;
      }),
    );
  }
}

/** "last heartbeat N s ago", or for a worker whose heartbeats stopped "no heartbeat for N s". */
function heartbeatText(w, status, nowMs) {
  if (status.expired) return `no heartbeat for ${formatSilence(status.silentMs)}`;
  return w.lastHeartbeatMs == null ? "no heartbeat yet" : `last heartbeat ${formatAgo(nowMs - w.lastHeartbeatMs)}`;
}

function formatSilence(ms) {
  return formatAgo(ms).replace(/ ago$/, "");
}

/** How a worker is named everywhere: its full name (`externalId`, e.g. Celery's `w1@host`). */
export function workerLabel(w) {
  return String(w.externalId || w.hostname || w.id);
}

export class WorkersPanel {
  constructor(root) {
    this.list = root.querySelector("[data-workers]");
    this.empty = root.querySelector("[data-workers-empty]");
    this.count = root.querySelector("[data-workers-count]");
    /** @type {Map<string, HTMLLIElement>} */
    this.items = new Map();
    this.selected = ""; // the worker filter: that worker's item is marked current
  }

  /** Mark the worker whose jobs the list shows (by externalId, "" for none). */
  setSelected(externalId) {
    this.selected = externalId || "";
    for (const li of this.items.values()) this.markSelected(li);
  }

  markSelected(li) {
    const on = !!this.selected && li._externalId === this.selected;
    li.classList.toggle("is-selected", on);
    if (on) li._cells.host.setAttribute("aria-current", "true");
    else li._cells.host.removeAttribute("aria-current");
  }

  clear() {
    this.list.replaceChildren();
    this.items.clear();
  }

  /** Structure changes only when workers changed; "N s ago" is refreshed every call. */
  render(store, nowMs) {
    const workers = [...store.workers.values()];
    // Liveness is re-evaluated on every render (at least once a second): a worker
    // whose heartbeats stopped goes offline without any event.
    const status = new Map(workers.map((w) => [w.id, store.workerStatus(w, nowMs)]));
    let expiredChanged = false;
    for (const w of workers) {
      const li = this.items.get(w.id);
      if (li && li._expired !== status.get(w.id).expired) expiredChanged = true;
    }
    const stateOf = (w) => status.get(w.id).state;
    workers.sort((a, b) => (WORKER_ORDER[stateOf(a)] ?? 1) - (WORKER_ORDER[stateOf(b)] ?? 1) || workerLabel(a).localeCompare(workerLabel(b)));
    const shown = workers.slice(0, MAX_WORKERS);
    if (store.workersChanged || expiredChanged) {
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
        if (li._v !== w.v || li._expired !== status.get(w.id).expired) this.fillItem(li, w, status.get(w.id));
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
      const online = workers.filter((w) => stateOf(w) !== "offline").length;
      setText(this.count, workers.length ? `${online} online · ${workers.length - online} offline` : "");
    }
    for (const w of shown) {
      const li = this.items.get(w.id);
      if (li) setText(li._cells.ago, heartbeatText(w, status.get(w.id), nowMs));
    }
  }

  createItem(w) {
    const li = el("li", "worker");
    li.dataset.workerId = w.id;
    const top = el("div", "worker-top");
    const dot = el("span", "worker-dot");
    dot.setAttribute("aria-hidden", "true");
    // The worker's view: the jobs list filtered on it (a job's workerId is its externalId).
    const host = w.externalId ? navLink("worker-host mono", null, viewUrl({ filter: { worker: w.externalId } })) : el("span", "worker-host mono");
    li._externalId = w.externalId || "";
    if (w.externalId) li.dataset.externalId = w.externalId;
    const hostname = el("span", "worker-hostname muted small mono");
    const state = el("span", "worker-state");
    top.append(dot, host, hostname, state);
    const bottom = el("div", "worker-bottom muted small");
    const jobs = el("span", "worker-jobs");
    const ago = el("span", "worker-ago");
    bottom.append(jobs, ago);
    li.append(top, bottom);
    li._cells = { host, hostname, state, jobs, ago };
    this.markSelected(li);
    return li;
  }

  fillItem(li, w, status) {
    const c = li._cells;
    const state = status.state;
    // Labelled by the worker's full name (Celery's `w1@host`): several workers share a host.
    const label = workerLabel(w);
    setText(c.host, label);
    const host = w.hostname && w.hostname !== label ? w.hostname : "";
    setText(c.hostname, host ? `on ${host}` : "");
    c.hostname.hidden = !host;
    const title = w.externalId ? `Jobs of ${w.externalId}` : w.id;
    if (c.host.title !== title) c.host.title = title;
    setText(c.state, state);
    li.dataset.state = state;
    li.classList.toggle("is-offline", state === "offline");
    li.classList.toggle("is-expired", status.expired);
    if (status.expired) li.dataset.offlineReason = "heartbeat_expired";
    else delete li.dataset.offlineReason;
    const active = status.expired ? "0" : w.activeJobs == null ? "—" : formatInt(w.activeJobs);
    setText(c.jobs, w.concurrency != null ? `${active} / ${w.concurrency} active` : `${active} active`);
    li._v = w.v;
    li._expired = status.expired;
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
    const name = navLink("queue-name mono", null, viewUrl({ filter: { queue: q.name } }));
    name.title = `Jobs of queue ${q.name}`;
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
    // The connection's jobs (its whole retained history, whatever the filter), from
    // the API's counts; until an answer has them, the jobs the list holds ("+": more
    // are in the history, behind "Load more").
    const counts = store.counts;
    if (counts) {
      setText(n.jobs, formatInt(counts.total));
      setText(n.active, formatInt(counts.active));
      setText(n.failed, formatInt(counts.failed));
    } else {
      const listed = store.listed;
      setText(n.jobs, formatInt(listed.total) + (store.cursor ? "+" : ""));
      setText(n.active, formatInt(listed.counts.active));
      setText(n.failed, formatInt(listed.counts.failed));
    }
    n.jobs.dataset.count = counts ? String(counts.total) : "";
    let online = 0;
    for (const w of store.workers.values()) if (store.workerStatus(w, nowMs).state !== "offline") online++;
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
