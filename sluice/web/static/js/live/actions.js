// Operator actions (docs/api.md, "Actions"): the job drawer's Revoke, Terminate and
// Retry, the worker view's Pool +1, Pool −1 and Shut down, and "Retry all N failed"
// on a list filtered to failed (or cancelled) jobs.
//
// A click POSTs the action with the page's session (the API answers 202 with a
// `commandId`); the button is disabled and its status reads "pending…" until a
// `command:result` event with that id arrives on the page's stream, then "done" or
// "failed: <error>" (a retry's result links to the new job). A refused request
// (403 read-only, 404, 429…) shows the server's message at once. Statuses are kept
// per target (a job, a worker, a filter), so a drawer closed and opened again, or a
// worker view left and come back to, shows where its command is.
//
// Nothing is shown on a read-only instance (GET /api/config says `readOnly`): the
// page calls setEnabled() once it knows. Untrusted text only goes through textContent.

import { api, errorMessage } from "../api.js";
import * as contract from "../contract.js";
import { filterToParams, FILTER_KEYS } from "./query.js";
import { el, navLink, setText } from "./view.js";
import { formatInt } from "../format.js";

export const ACTION_LABEL = {
  revoke: "Revoke",
  terminate: "Terminate",
  retry: "Retry",
  bulk_retry: "Retry all",
  pool_grow: "Pool +1",
  pool_shrink: "Pool −1",
  shutdown: "Shut down",
};
/** Signals a terminate may send (the API's list); the first is the default. */
export const SIGNALS = contract.SIGNALS || ["SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1"];
/** Which job actions a job in each state offers. */
const JOB_ACTIONS = {
  queued: ["revoke"],
  scheduled: ["revoke"],
  active: ["terminate"],
  failed: ["retry"],
  cancelled: ["retry"],
};
/** The agent drops a command older than 60 s: past this without a result, say so. */
const NO_RESULT_MS = 75_000;
/** Results kept by command id (a result may arrive before the POST's answer). */
const MAX_RESULTS = 500;
const MAX_ERROR = 500;

/**
 * The commands this page sent and what became of them, by target ("job:<id>",
 * "worker:<externalId>", "bulk:<filter>"): one status per target, the latest.
 */
export class Commands {
  /** @param {() => void} onChange */
  constructor(onChange) {
    this.onChange = onChange;
    /** @type {Map<string, any>} target -> entry */
    this.byTarget = new Map();
    /** @type {Map<string, any>} commandId -> entry */
    this.byId = new Map();
    /** @type {Map<string, any>} commandId -> command:result data seen on the stream */
    this.results = new Map();
    /** @type {Map<string, string>} new job id (a retry's) -> the job it retried */
    this.retried = new Map();
  }

  /** Whether a command of `target` is on its way or waiting for its result. */
  busy(target) {
    const entry = this.byTarget.get(target);
    return !!entry && (entry.status === "sending" || (entry.status === "pending" && !entry.late));
  }

  entry(target) {
    return this.byTarget.get(target) || null;
  }

  /**
   * POST an action and follow it. `origin` (job actions) is the job's external id,
   * remembered so that a retry's new job can link back to it.
   */
  async send(target, action, path, body, origin = "") {
    if (this.busy(target)) return; // one command at a time per target (a double click)
    const entry = { target, action, label: ACTION_LABEL[action] || action, status: "sending", commandId: "", detail: null, message: "", origin, late: false, timer: 0 };
    const before = this.byTarget.get(target);
    if (before) clearTimeout(before.timer);
    this.byTarget.set(target, entry);
    this.onChange();
    const res = await api(path, { method: "POST", body });
    if (this.byTarget.get(target) !== entry) return;
    if (res.status === 401) {
      entry.status = "error";
      entry.message = "Your session has ended: sign in again.";
      this.onChange();
      if (this.onUnauthorized) this.onUnauthorized();
      return;
    }
    const commandId = res.ok && res.data && typeof res.data.commandId === "string" ? res.data.commandId : "";
    if (!commandId) {
      entry.status = "error";
      entry.message = errorMessage(res, `The server answered ${res.status}.`);
      this.onChange();
      return;
    }
    entry.commandId = commandId;
    entry.status = "pending";
    this.byId.set(commandId, entry);
    const early = this.results.get(commandId);
    if (early) this.finish(entry, early);
    else {
      entry.timer = setTimeout(() => {
        if (entry.status !== "pending") return;
        entry.late = true; // the button can be pressed again
        this.onChange();
      }, NO_RESULT_MS);
    }
    this.onChange();
  }

  /** A `command:result` from the stream (any command: ours or another page's). */
  onResult(data) {
    if (!data || typeof data !== "object" || typeof data.commandId !== "string") return false;
    this.results.set(data.commandId, data);
    if (this.results.size > MAX_RESULTS) this.results.delete(this.results.keys().next().value);
    const entry = this.byId.get(data.commandId);
    if (!entry || entry.status !== "pending") return false;
    this.finish(entry, data);
    this.onChange();
    return true;
  }

  finish(entry, data) {
    clearTimeout(entry.timer);
    entry.status = data.status === "done" ? "done" : "failed";
    entry.detail = data.detail && typeof data.detail === "object" ? data.detail : {};
    entry.late = false;
    const newJob = entry.detail.newJobId;
    if (entry.status === "done" && typeof newJob === "string" && newJob && entry.origin) {
      this.retried.set(newJob, entry.origin);
    }
  }
}

/** The text of a command's status (without the link to a retried job). */
export function statusText(entry) {
  const label = entry.label;
  if (entry.status === "sending") return `${label}: pending…`;
  if (entry.status === "error") return `${label}: ${entry.message}`;
  if (entry.status === "pending") {
    return entry.late
      ? `${label}: pending… no result yet (is celery-agent running, without --no-actions?)`
      : `${label}: pending…`;
  }
  const d = entry.detail || {};
  if (entry.status === "failed") return `${label}: failed: ${errorOf(d)}`;
  if (entry.action === "bulk_retry" && Number.isFinite(d.retried)) {
    const failed = Number.isFinite(d.failed) && d.failed ? `, ${formatInt(d.failed)} failed` : "";
    return `${label}: done: ${formatInt(d.retried)} retried${failed}`;
  }
  if (d.replies && typeof d.replies === "object") {
    const replies = Object.entries(d.replies).map(([w, r]) => `${w}: ${typeof r === "string" ? r : JSON.stringify(r)}`);
    if (replies.length) return `${label}: done (${replies.join(", ").slice(0, MAX_ERROR)})`;
  }
  return `${label}: done`;
}

function errorOf(detail) {
  const e = detail.error;
  const text = typeof e === "string" && e ? e : Object.keys(detail).length ? JSON.stringify(detail) : "no reason given";
  return text.length > MAX_ERROR ? `${text.slice(0, MAX_ERROR)}…` : text;
}

/** A status line: announced politely by screen readers as it changes. */
function statusLine() {
  const p = el("p", "action-status small");
  p.setAttribute("role", "status");
  p.setAttribute("aria-live", "polite");
  p.dataset.actionStatus = "";
  return p;
}

function button(text, className, data) {
  const b = el("button", `btn btn-sm ${className}`, text);
  b.type = "button";
  for (const [k, v] of Object.entries(data)) b.dataset[k] = v;
  return b;
}

export class Actions {
  /**
   * @param {HTMLElement} root
   * @param {{
   *   connectionId: string,
   *   jobHref: (jobId: string) => string,
   *   onUnauthorized: () => void,
   * }} opts
   */
  constructor(root, opts) {
    this.opts = opts;
    this.base = `/api/connections/${encodeURIComponent(opts.connectionId)}`;
    this.enabled = false; // until GET /api/config says the instance is not read-only
    this.commands = new Commands(() => this.changed());
    this.commands.onUnauthorized = opts.onUnauthorized;
    this.filter = null;
    this.jobBars = new Set();
    this.dialog = new ConfirmDialog(root.querySelector("[data-confirm-dialog]"));
    this.workerNode = root.querySelector("[data-worker-actions]");
    this.bulkNode = root.querySelector("[data-bulk-actions]");
    this.buildWorkerBar();
    this.buildBulkBar();
  }

  /** Show the actions (true) or not (a read-only instance, or not known yet). */
  setEnabled(enabled) {
    this.enabled = !!enabled;
    document.body.dataset.actions = this.enabled ? "on" : "off";
    this.changed();
  }

  /** A command:result from the stream. */
  onResult(data) {
    this.commands.onResult(data);
  }

  /** The job a retry made `jobId` from (its external id), if this page made it. */
  retryOf(jobId) {
    return this.commands.retried.get(jobId) || "";
  }

  /** The list's filter changed: the worker view and the bulk retry follow it. */
  setFilter(filter) {
    this.filter = { ...filter };
    this.changed();
  }

  changed() {
    for (const bar of this.jobBars) bar.render();
    this.renderWorker();
    this.renderBulk(null);
  }

  // ---- the job drawer ------------------------------------------------------

  /** A bar of actions for the drawer's job; `update(job)` follows it, `remove()` ends it. */
  jobBar() {
    const node = el("div", "actions actions-job");
    node.setAttribute("role", "group");
    node.setAttribute("aria-label", "Actions on this job");
    node.dataset.jobActions = "";
    const buttons = el("div", "actions-buttons");
    const revoke = button("Revoke", "btn-secondary", { jobAction: "revoke" });
    revoke.title = "Take it off the queue: a worker that receives it drops it";
    const terminate = button("Terminate", "btn-danger-text btn-secondary", { jobAction: "terminate" });
    terminate.title = "Stop it where it runs: its process gets the signal";
    const signalId = `terminate-signal-${Math.random().toString(36).slice(2, 9)}`;
    const signalLabel = el("label", "actions-signal-label small", "Signal");
    signalLabel.htmlFor = signalId;
    const signal = el("select", "actions-signal");
    signal.id = signalId;
    signal.dataset.terminateSignal = "";
    for (const s of SIGNALS) {
      const o = el("option", null, s);
      o.value = s;
      signal.append(o);
    }
    const signalWrap = el("span", "actions-signal-wrap");
    signalWrap.append(signalLabel, signal);
    const retry = button("Retry", "btn-secondary", { jobAction: "retry" });
    retry.title = "Send it again with the same arguments (a new job)";
    buttons.append(revoke, signalWrap, terminate, retry);
    const status = statusLine();
    const link = el("p", "action-result small");
    link.hidden = true;
    node.append(buttons, status, link);
    const bar = {
      node,
      job: null,
      update: (job) => {
        bar.job = job;
        bar.render();
      },
      remove: () => {
        this.jobBars.delete(bar);
        node.remove();
      },
      render: () => {
        const job = bar.job;
        const offered = this.enabled && job ? JOB_ACTIONS[job.state] || [] : [];
        const target = job ? `job:${job.id}` : "";
        const entry = target ? this.commands.entry(target) : null;
        node.hidden = !this.enabled || !job || (!offered.length && !entry);
        const busy = !!target && this.commands.busy(target);
        revoke.hidden = !offered.includes("revoke");
        terminate.hidden = signalWrap.hidden = !offered.includes("terminate");
        retry.hidden = !offered.includes("retry");
        for (const b of [revoke, terminate, retry, signal]) b.disabled = busy;
        buttons.hidden = !offered.length;
        this.renderStatus(status, link, entry);
      },
    };
    const act = (action, extra = {}) => {
      const job = bar.job;
      if (!job || !this.enabled) return;
      const path = `${this.base}/jobs/${encodeURIComponent(job.id)}/actions`;
      this.commands.send(`job:${job.id}`, action, path, { action, ...extra }, job.externalId || job.id);
    };
    revoke.addEventListener("click", () => act("revoke"));
    terminate.addEventListener("click", () => act("terminate", { signal: signal.value }));
    retry.addEventListener("click", () => act("retry"));
    this.jobBars.add(bar);
    return bar;
  }

  /** Write a status line (and, with `link`, a retry's link to its new job) from a command entry. */
  renderStatus(status, link, entry) {
    setText(status, entry ? statusText(entry) : "");
    status.dataset.status = entry ? entry.status : "";
    if (entry && entry.late) status.dataset.late = "true";
    else delete status.dataset.late;
    if (!link) return;
    const newJob = entry && entry.status === "done" && entry.detail ? entry.detail.newJobId : null;
    if (typeof newJob === "string" && newJob) {
      if (link._job !== newJob) {
        const a = navLink("action-link", "Open the new job", this.opts.jobHref(newJob));
        a.dataset.newJob = newJob;
        a.title = `The retry: job ${newJob}`;
        link.replaceChildren(a, el("span", "muted mono", ` ${newJob}`));
        link._job = newJob;
      }
      link.hidden = false;
    } else if (!link.hidden || link._job) {
      link.replaceChildren();
      link._job = null;
      link.hidden = true;
    }
  }

  // ---- the worker view (the list filtered on a worker) -----------------------

  buildWorkerBar() {
    const node = this.workerNode;
    if (!node) return;
    const buttons = el("div", "actions-buttons");
    const grow = button("Pool +1", "btn-secondary", { workerAction: "pool_grow" });
    const shrink = button("Pool −1", "btn-secondary", { workerAction: "pool_shrink" });
    const shutdown = button("Shut down", "btn-secondary btn-danger-text", { workerAction: "shutdown" });
    const head = el("span", "actions-head small", "Worker");
    buttons.append(head, grow, shrink, shutdown);
    const status = statusLine();
    node.replaceChildren(buttons, status);
    this.worker = { node, grow, shrink, shutdown, status, head };
    const act = async (action) => {
      const name = this.filter && this.filter.worker;
      if (!name || !this.enabled) return;
      const target = `worker:${name}`;
      if (this.commands.busy(target)) return;
      if (action === "shutdown") {
        const ok = await this.dialog.ask({
          title: `Shut down ${name}?`,
          text: "The worker stops taking jobs, finishes the ones it runs and exits. Nothing restarts it unless a supervisor does.",
          confirm: "Shut down",
        });
        if (!ok || !this.filter || this.filter.worker !== name) return;
      }
      const body = action === "shutdown" ? { action } : { action, n: 1 };
      this.commands.send(target, action, `${this.base}/workers/${encodeURIComponent(name)}/actions`, body);
    };
    grow.addEventListener("click", () => act("pool_grow"));
    shrink.addEventListener("click", () => act("pool_shrink"));
    shutdown.addEventListener("click", () => act("shutdown"));
  }

  renderWorker() {
    const w = this.worker;
    if (!w) return;
    const name = this.filter ? this.filter.worker : "";
    const show = this.enabled && !!name;
    w.node.hidden = !show;
    if (!show) return;
    const label = `Actions on worker ${name}`;
    if (w.node.getAttribute("aria-label") !== label) w.node.setAttribute("aria-label", label);
    const target = `worker:${name}`;
    const busy = this.commands.busy(target);
    for (const b of [w.grow, w.shrink, w.shutdown]) b.disabled = busy;
    this.renderStatus(w.status, null, this.commands.entry(target));
  }

  // ---- retry every failed (or cancelled) job of the filter -------------------

  buildBulkBar() {
    const node = this.bulkNode;
    if (!node) return;
    const retry = button("Retry all", "btn-secondary", { bulkRetry: "" });
    const status = statusLine();
    node.replaceChildren(retry, status);
    this.bulk = { node, retry, status, count: null, label: "" };
    retry.addEventListener("click", async () => {
      const filter = this.filter;
      if (!filter || !this.enabled || !isBulkState(filter.state)) return;
      const target = bulkTarget(filter);
      if (this.commands.busy(target)) return;
      const what = this.bulk.label.replace(/^Retry all /, "");
      const ok = await this.dialog.ask({
        title: `Retry all ${what} jobs?`,
        text: `Each is sent again as a new job, with the arguments it was started with (a job whose arguments were not captured is not retried). Filter: ${describe(filter)}.`,
        confirm: "Retry all",
      });
      if (!ok || !this.filter || bulkTarget(this.filter) !== target) return;
      const sent = {};
      for (const key of FILTER_KEYS) if (filter[key]) sent[key] = filter[key];
      this.commands.send(target, "bulk_retry", `${this.base}/jobs/actions`, { action: "retry", filter: sent });
    });
  }

  /**
   * Called every render with the store (null: keep the count): "Retry all N failed".
   * N is the connection's count for the state when the filter is the state alone,
   * else the jobs the list holds ("N+" while older ones are in the history).
   */
  renderBulk(store) {
    const b = this.bulk;
    if (!b) return;
    const filter = this.filter;
    const show = this.enabled && !!filter && isBulkState(filter.state);
    if (store && show) {
      const alone = FILTER_KEYS.every((k) => k === "state" || !filter[k]);
      let count;
      let more = false;
      if (alone && store.counts && Number.isFinite(store.counts[filter.state])) count = store.counts[filter.state];
      else {
        count = store.listed ? store.listed.total : 0;
        more = !!(store.cursor || store.trimmed);
      }
      b.count = count;
      const label = `Retry all ${formatInt(count)}${more ? "+" : ""} ${filter.state}`;
      if (label !== b.label) {
        b.label = label;
        setText(b.retry, label);
      }
    }
    const target = filter ? bulkTarget(filter) : "";
    const entry = show ? this.commands.entry(target) : null;
    b.node.hidden = !show || (b.count === 0 && !entry);
    if (!show) return;
    b.retry.disabled = this.commands.busy(target) || !b.count;
    this.renderStatus(b.status, null, entry);
  }
}

function isBulkState(state) {
  return state === "failed" || state === "cancelled";
}

function bulkTarget(filter) {
  return `bulk:${filterToParams(filter)}`;
}

function describe(filter) {
  return FILTER_KEYS.filter((k) => filter[k]).map((k) => `${k}=${filter[k]}`).join(", ");
}

/** One confirmation dialog (a native modal <dialog>: Escape cancels). */
class ConfirmDialog {
  /** @param {HTMLDialogElement | null} node */
  constructor(node) {
    this.node = node;
    this.resolve = null;
    if (!node) return;
    this.title = node.querySelector("[data-confirm-title]");
    this.text = node.querySelector("[data-confirm-text]");
    this.ok = node.querySelector("[data-confirm-ok]");
    this.ok.addEventListener("click", () => this.node.close("ok"));
    node.addEventListener("close", () => this.settle(node.returnValue === "ok"));
    // Escape cancels the dialog only: the drawer behind it stays open.
    node.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape") return;
      ev.preventDefault();
      ev.stopPropagation();
      this.node.close("cancel");
    });
  }

  settle(ok) {
    const resolve = this.resolve;
    this.resolve = null;
    if (resolve) resolve(ok);
  }

  /** @returns {Promise<boolean>} whether the user confirmed */
  ask({ title, text, confirm }) {
    if (!this.node) return Promise.resolve(window.confirm(`${title}\n\n${text}`));
    if (this.node.open) this.node.close("cancel");
    setText(this.title, title);
    setText(this.text, text);
    setText(this.ok, confirm);
    this.node.returnValue = "";
    const opener = document.activeElement;
    return new Promise((resolve) => {
      this.resolve = (ok) => {
        if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
        resolve(ok);
      };
      this.node.showModal();
    });
  }
}
