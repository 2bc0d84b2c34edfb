// The job detail drawer: one job from GET /api/connections/<id>/jobs/<job>, kept
// live from the stream.
//
// The answer's `streamId` says which stream entries it already reflects. Events of
// the job that arrive while it is being fetched are held, then those after
// `streamId` are applied; later events are applied as they come. Untrusted text
// only ever goes through textContent.

import { api } from "../api.js";
import { compareIds, parseId } from "./ids.js";
import { FINISHED, eventAge, isLate } from "./store.js";
import { viewUrl } from "./query.js";
import { badge, el, navLink, setText } from "./view.js";
import { formatDateTime, formatDuration, parseTime } from "../format.js";

/** The index keeps this many transitions per job, and this much of each error. */
const MAX_TIMELINE = 50;
const MAX_TIMELINE_ERROR = 500;

/** A job event's timeline entry, as the server's index writes it (docs/api.md). */
function timelineEntry(data, previousState) {
  const entry = { state: data.state, timestamp: data.timestamp };
  if (data.workerId != null) entry.workerId = data.workerId;
  if (data.attempt != null) entry.attempt = data.attempt;
  if (data.error) entry.error = String(data.error).slice(0, MAX_TIMELINE_ERROR);
  entry.previousState = previousState;
  return entry;
}

export class JobDrawer {
  /**
   * @param {HTMLElement} root
   * @param {{
   *   connectionId: string,
   *   onClose: () => void,
   *   onUnauthorized: () => void,
   *   onLoaded?: (job: any) => void,
   *   rowLink?: (jobId: string) => HTMLElement | null,
   *   isLost?: (job: any) => boolean,
   *   actions?: import("./actions.js").Actions,
   * }} opts
   */
  constructor(root, opts) {
    this.opts = opts;
    this.node = root.querySelector("[data-drawer]");
    this.title = this.node.querySelector("[data-drawer-title]");
    this.sub = this.node.querySelector("[data-drawer-sub]");
    this.body = this.node.querySelector("[data-drawer-body]");
    this.node.querySelector("[data-drawer-close]").addEventListener("click", () => this.opts.onClose());
    this.node.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        ev.preventDefault();
        this.opts.onClose();
      }
    });
    this.ref = ""; // the job id (or external id) asked for; "" when closed
    this.job = null;
    this.asOf = null; // parsed id the shown job is up to date with
    this.pending = null; // events held while the job is fetched
    this.gen = 0;
    this.opener = null;
    this.parts = null;
    this.bar = null; // the job's action buttons (live/actions.js)
  }

  /** Drop the action bar of the job shown (its command statuses stay with the page). */
  dropBar() {
    if (this.bar) this.bar.remove();
    this.bar = null;
  }

  get isOpen() {
    return !!this.ref;
  }

  /**
   * Open the drawer on a job (an id or an external id) and fetch it.
   * @param {string} ref
   * @param {{opener?: HTMLElement | null, focus?: boolean}} [how]
   */
  open(ref, { opener = null, focus = true } = {}) {
    if (opener) this.opener = opener;
    if (ref === this.ref) {
      if (focus) this.focus();
      return;
    }
    this.ref = ref;
    this.job = null;
    this.asOf = null;
    this.pending = [];
    this.parts = null;
    this.dropBar();
    const gen = ++this.gen;
    this.node.hidden = false;
    this.node.setAttribute("aria-busy", "true");
    document.body.classList.add("drawer-open");
    setText(this.title, "Job");
    this.sub.replaceChildren();
    this.sub._state = null;
    this.body.replaceChildren(el("p", "muted loading", "Loading the job…"));
    if (focus) this.focus();
    this.fetch(gen);
  }

  focus() {
    this.title.focus();
  }

  /** Fetch the open job again (after the page re-joined the stream elsewhere). */
  reload() {
    const ref = this.ref;
    if (!ref) return;
    this.ref = "";
    this.open(ref, { focus: false });
  }

  async fetch(gen) {
    const path = `/api/connections/${encodeURIComponent(this.opts.connectionId)}/jobs/${encodeURIComponent(this.ref)}`;
    const res = await api(path);
    if (gen !== this.gen) return;
    this.node.setAttribute("aria-busy", "false");
    if (res.status === 401) {
      this.opts.onUnauthorized();
      return;
    }
    if (!res.ok || !res.data || !res.data.data) {
      const message = res.status === 404
        ? "No such job. It may have been retained out of the index (jobs are kept a while after their last event)."
        : "The job could not be loaded. Close this and try again in a moment.";
      setText(this.title, res.status === 404 ? "Job not found" : "Job");
      const p = el("p", "alert alert-error", message);
      p.setAttribute("role", "alert");
      this.body.replaceChildren(p);
      this.pending = null;
      return;
    }
    this.job = res.data.data;
    if (!Array.isArray(this.job.timeline)) this.job.timeline = [];
    this.asOf = parseId(res.data.streamId) || [0, 0];
    const held = this.pending || [];
    this.pending = null;
    this.build();
    for (const [id, data] of held) this.onJobEvent(id, data);
    if (this.opts.onLoaded) this.opts.onLoaded(this.job);
  }

  /** Close (the caller updates the URL). Focus goes back to what opened it. */
  close() {
    if (!this.ref) return;
    const jobId = this.job ? this.job.id : this.ref;
    this.ref = "";
    this.gen++;
    this.job = null;
    this.pending = null;
    this.parts = null;
    this.dropBar();
    const hadFocus = this.node.contains(document.activeElement);
    this.node.hidden = true;
    document.body.classList.remove("drawer-open");
    this.body.replaceChildren();
    let back = this.opener;
    this.opener = null;
    if (!back || !back.isConnected) back = this.opts.rowLink ? this.opts.rowLink(jobId) : null;
    if (hadFocus) {
      if (back) back.focus();
      else document.getElementById("jobs-title")?.focus();
    }
  }

  /** A job:state_change from the stream. */
  onJobEvent(id, data) {
    if (!this.ref || !data || typeof data !== "object") return;
    if (this.pending) {
      if (data.id === this.ref || data.externalId === this.ref) this.pending.push([id, data]);
      return;
    }
    const job = this.job;
    if (!job || data.id !== job.id) return;
    const parsed = parseId(id);
    if (!parsed || compareIds(parsed, this.asOf) <= 0) return; // already in what we have
    this.asOf = parsed;
    const ext = data.extensions && typeof data.extensions === "object" ? data.extensions : {};
    if (isLate({ age: eventAge(job) }, eventAge(data))) {
      this.onLateEvent(data, ext);
      return;
    }
    const previous = job.state;
    for (const [key, value] of Object.entries(data)) {
      if (key === "extensions" || key === "stacktrace" || value === null || value === undefined) continue;
      job[key] = value;
    }
    job.previousState = data.previousState ?? null;
    job.updatedAt = new Date(parsed[0]).toISOString();
    this.takeDetails(data, ext);
    if (typeof ext.retryOf === "string" && ext.retryOf) job.retryOf = ext.retryOf;
    job.timeline.push(timelineEntry(data, previous ?? null));
    if (job.timeline.length > MAX_TIMELINE) job.timeline.splice(0, job.timeline.length - MAX_TIMELINE);
    this.update();
  }

  /**
   * An event older than what the drawer shows (another process's, arrived late):
   * as the server's index does, the job stays as of its newest event; the event
   * only joins the timeline at its time (before the first entry of its time or
   * later) and brings what it sent of arguments, result and traceback.
   */
  onLateEvent(data, ext) {
    const job = this.job;
    this.takeDetails(data, ext);
    const entry = timelineEntry(data, data.previousState ?? null);
    const at = job.timeline.findIndex((e) => typeof e.timestamp === "string" && e.timestamp >= data.timestamp);
    if (at < 0) job.timeline.push(entry);
    else job.timeline.splice(at, 0, entry);
    if (job.timeline.length > MAX_TIMELINE) job.timeline.splice(0, job.timeline.length - MAX_TIMELINE);
    this.update();
  }

  /** What an event sent of arguments, keyword arguments, result and traceback. */
  takeDetails(data, ext) {
    const job = this.job;
    for (const key of ["args", "kwargs", "result"]) {
      if (ext[key] !== undefined && ext[key] !== null) job[key] = ext[key];
    }
    if (typeof data.stacktrace === "string" && data.stacktrace) job.traceback = data.stacktrace;
  }

  /** Build the drawer's parts for a newly loaded job. */
  build() {
    const dl = el("dl", "kv");
    const row = (key, label) => {
      const dt = el("dt", null, label);
      const dd = el("dd");
      dd.dataset.detailField = key;
      dl.append(dt, dd);
      return dd;
    };
    const parts = {
      task: row("name", "Task"),
      id: row("id", "Job id"),
      externalId: row("externalId", "External id"),
      queue: row("queue", "Queue"),
      worker: row("worker", "Worker"),
      attempt: row("attempt", "Attempt"),
      created: row("createdAt", "Created"),
      started: row("startedAt", "Started"),
      finished: row("finishedAt", "Finished"),
      duration: row("duration", "Duration"),
      updated: row("updatedAt", "Updated"),
      retryOf: row("retryOf", "Retry of"),
    };
    parts.id.className = "mono";
    parts.externalId.className = "mono";
    const error = el("pre", "detail-error");
    error.dataset.detailError = "";
    const timelineHead = el("h3", "drawer-section-title", "Timeline");
    const timeline = el("ol", "timeline");
    timeline.dataset.detailTimeline = "";
    const timelineNote = el("p", "muted small");
    const sections = {};
    const payload = el("div", "detail-payload");
    for (const [key, label] of [["args", "Arguments"], ["kwargs", "Keyword arguments"], ["result", "Result"], ["traceback", "Traceback"]]) {
      const section = el("section", "drawer-section");
      section.dataset.detailSection = key;
      const id = `detail-${key}`;
      const h = el("h3", "drawer-section-title", label);
      h.id = id;
      const pre = el("pre", `detail-pre${key === "traceback" ? " detail-traceback" : ""}`);
      pre.setAttribute("aria-labelledby", id);
      pre.tabIndex = 0; // scrollable: reachable from the keyboard
      section.append(h, pre);
      payload.append(section);
      sections[key] = { section, pre };
    }
    const none = el("p", "muted small", "The producer sent no arguments, result or traceback for this job.");
    this.parts = { ...parts, error, timeline, timelineNote, sections, none, shown: -1 };
    this.dropBar();
    this.bar = this.opts.actions ? this.opts.actions.jobBar() : null;
    this.body.replaceChildren(...(this.bar ? [this.bar.node] : []), dl, error, timelineHead, timeline, timelineNote, payload, none);
    this.update();
  }

  /** "Lost" beside the state while the worker holding the job is offline (re-checked every render). */
  renderLost() {
    const job = this.job;
    const lost = !!(job && this.opts.isLost && this.opts.isLost(job));
    if (!!this.sub._lost === lost) return;
    this.sub._lost = lost;
    if (this.sub._lostTag) this.sub._lostTag.remove();
    this.sub._lostTag = null;
    if (lost) {
      const tag = el("span", "lost-tag", "Lost");
      tag.title = `Its worker ${job.workerId} is offline: it will not finish there`;
      this.sub.append(tag);
      this.sub._lostTag = tag;
      this.node.dataset.lost = "true";
    } else {
      delete this.node.dataset.lost;
    }
  }

  /** Bring the drawer up to date with this.job (only what changed is written). */
  update() {
    const job = this.job;
    const p = this.parts;
    if (!job || !p) return;
    setText(this.title, job.name || "(unnamed)");
    this.node.dataset.state = job.state;
    if (this.sub._state !== job.state) {
      this.sub.replaceChildren(badge(job.state));
      this.sub._state = job.state;
      this.sub._lost = false;
    }
    this.renderLost();
    this.linkField(p.task, job.name, { name: job.name }, `All jobs named ${job.name}`);
    setText(p.id, job.id);
    setText(p.externalId, job.externalId);
    this.linkField(p.queue, job.queue, { queue: job.queue }, `All jobs of queue ${job.queue}`);
    this.linkField(p.worker, job.workerId, { worker: job.workerId }, `All jobs of worker ${job.workerId}`);
    setText(p.attempt, job.attempt != null ? (job.maxRetries != null ? `${job.attempt} of ${job.maxRetries + 1}` : String(job.attempt)) : "—");
    for (const [node, key] of [[p.created, "createdAt"], [p.started, "startedAt"], [p.finished, "finishedAt"], [p.updated, "updatedAt"]]) {
      const ms = parseTime(job[key]);
      setText(node, ms == null ? "—" : formatDateTime(ms));
      if (ms != null) node.title = job[key];
    }
    // A retry made by Sluice links back to the job it retried (the agent sends
    // `extensions.retryOf`; a retry made from this page is known to the page too).
    const ext = job.extensions && typeof job.extensions === "object" ? job.extensions : {};
    const origin = job.retryOf || (typeof ext.retryOf === "string" ? ext.retryOf : "") || (this.opts.actions ? this.opts.actions.retryOf(job.externalId) || this.opts.actions.retryOf(job.id) : "");
    this.linkJob(p.retryOf, origin);
    if (this.bar) this.bar.update(job);
    const d = duration(job);
    setText(p.duration, d == null ? (job.state === "active" ? "running" : "—") : formatDuration(d));
    const showError = (job.state === "failed" || job.state === "retrying") && job.error;
    setText(p.error, showError ? String(job.error) : "");
    p.error.hidden = !showError;
    this.renderTimeline();
    let any = false;
    for (const [key, { section, pre }] of Object.entries(p.sections)) {
      const value = job[key];
      const has = value !== undefined && value !== null && value !== "";
      section.hidden = !has;
      if (has) {
        any = true;
        setText(pre, typeof value === "string" ? value : JSON.stringify(value, null, 2));
      }
    }
    p.none.hidden = any;
  }

  /** The "Retry of" row: a link that opens the original job's drawer, hidden without one. */
  linkJob(dd, ref) {
    const dt = dd.previousElementSibling;
    dd.hidden = !ref;
    if (dt) dt.hidden = !ref;
    if (dd._value === ref) return;
    dd._value = ref;
    if (!ref) {
      dd.replaceChildren();
      return;
    }
    const a = navLink("detail-link mono", ref, viewUrl({ filter: this.opts.filter ? this.opts.filter() : {}, job: ref }));
    a.title = `The job this one retried: ${ref}`;
    a.dataset.retryOf = ref;
    dd.replaceChildren(a);
  }

  /** A field whose value links to the jobs list filtered on it. */
  linkField(dd, value, filter, title) {
    if (value == null || value === "") {
      if (dd._value !== null) {
        dd.replaceChildren(document.createTextNode("—"));
        dd._value = null;
      }
      return;
    }
    if (dd._value === value) return;
    const a = navLink("detail-link", String(value), viewUrl({ filter }));
    a.title = title;
    dd.replaceChildren(a);
    dd._value = value;
  }

  renderTimeline() {
    const p = this.parts;
    const entries = this.job.timeline;
    if (p.shown === entries.length && p.first === entries[0]) return;
    p.shown = entries.length;
    p.first = entries[0];
    const items = entries.map((t) => {
      const li = el("li", "timeline-item");
      li.dataset.state = t.state;
      const top = el("div", "timeline-top");
      top.append(badge(t.state));
      const ms = parseTime(t.timestamp);
      const time = el("time", "timeline-time muted small", ms == null ? "" : formatDateTime(ms));
      if (t.timestamp) time.dateTime = t.timestamp;
      top.append(time);
      li.append(top);
      const meta = [];
      if (t.previousState) meta.push(`from ${t.previousState}`);
      if (t.workerId) meta.push(`on ${t.workerId}`);
      if (t.attempt != null) meta.push(`attempt ${t.attempt}`);
      if (meta.length) li.append(el("div", "timeline-meta muted small", meta.join(" · ")));
      if (t.error) li.append(el("div", "timeline-error", t.error));
      return li;
    });
    p.timeline.replaceChildren(...items);
    setText(p.timelineNote, entries.length >= MAX_TIMELINE ? `The last ${MAX_TIMELINE} transitions.` : "");
    p.timelineNote.hidden = entries.length < MAX_TIMELINE;
  }
}

/** How long the job ran: its own startedAt/finishedAt, else its timeline. */
function duration(job) {
  if (!FINISHED.has(job.state)) return null;
  let started = parseTime(job.startedAt);
  let finished = parseTime(job.finishedAt);
  const timeline = job.timeline || [];
  if (started == null) {
    for (let i = timeline.length - 1; i >= 0; i--) {
      if (timeline[i].state === "active") {
        started = parseTime(timeline[i].timestamp);
        break;
      }
    }
  }
  if (finished == null && timeline.length) finished = parseTime(timeline[timeline.length - 1].timestamp);
  if (started == null || finished == null || finished < started) return null;
  return finished - started;
}
