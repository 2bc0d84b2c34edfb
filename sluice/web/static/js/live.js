// Entry point of the live view: wires the store, the stream client and the views.
//
// The page loads what the job index API has (a first page of jobs for the filter in
// the URL, the workers, the queues), then follows the stream from the `streamId`
// those answers carry: nothing missed between the two, nothing applied twice. A new
// filter (a state chip, the search box, a worker, a queue…) is a new URL
// (history.pushState; back and forward work): the first page is loaded again and
// the stream re-joined from its streamId. "Load more" pages through the history.
//
// Events are applied to the in-memory store as they arrive (cheap); the DOM is
// updated inside an animation frame at most every 100 ms, plus a 1 s tick for the
// clocks ("N s ago", events/s).
//
// The header and the state chips show the connection's job counts, which every page
// of the API carries. After job events they are asked for again (`limit=1`), at most
// once every COUNTS_INTERVAL_MS and always after the last event seen.

import "./common.js";
import { api, errorMessage, goToLogin } from "./api.js";
import { JOB_STATE_CHANGE } from "./contract.js";
import { Actions } from "./live/actions.js";
import { JobDrawer } from "./live/detail.js";
import { filterToParams, isFiltered, readLocation, sameFilter, viewUrl } from "./live/query.js";
import { Store } from "./live/store.js";
import { COMMAND_RESULT, StreamClient } from "./live/stream.js";
import {
  JobsTable,
  PAGE_SIZE,
  QueuesPanel,
  ScopeBar,
  Stats,
  WorkersPanel,
  isModifiedClick,
  showIndicator,
} from "./live/view.js";

const root = document.body;
const connectionId = root.dataset.connectionId;
const base = `/api/connections/${encodeURIComponent(connectionId)}`;
/** Requests one "load more" (or the first screen) makes at most: a filtered page may be short. */
const MAX_ROUNDS = 5;

const store = new Store();
/** What the page shows: the URL's filter and the job whose details are open. */
let view = readLocation();
let ready = false; // the first snapshot is loaded

const jobs = new JobsTable(root, {
  onState: (state) => go({ filter: { ...view.filter, state }, job: view.job }),
  onOpen: (jobId, opener) => openJob(jobId, opener),
  onMore: () => loadMore(),
  jobHref: (jobId) => viewUrl({ filter: store.filter, job: jobId }),
});
const scope = new ScopeBar(root, {
  onRemove: (key) => go({ filter: { ...view.filter, [key]: "" }, job: view.job }),
});
const workers = new WorkersPanel(root);
const queues = new QueuesPanel(root);
const stats = new Stats(root);
// Operator actions: shown once GET /api/config says the instance is not read-only.
const actions = new Actions(root, {
  connectionId,
  jobHref: (jobId) => viewUrl({ filter: view.filter, job: jobId }),
  onUnauthorized: () => signedOut(),
});
const drawer = new JobDrawer(root, {
  connectionId,
  onClose: () => closeJob(),
  onUnauthorized: () => signedOut(),
  onLoaded: (job) => jobs.setOpen(job.id),
  rowLink: (jobId) => jobs.rowLink(jobId),
  isLost: (job) => store.jobLost(job, client.serverNow()),
  actions,
  filter: () => view.filter,
});

// The DOM is written at most every RENDER_INTERVAL_MS, always inside an animation
// frame: a table that shifts more often cannot be read anyway, and each redraw costs a
// relayout and a repaint. Events between two redraws only touch the in-memory store.
// (The connection indicator is not throttled: it changes rarely and matters at once.)
const RENDER_INTERVAL_MS = 100;
let frame = 0;
let lastDraw = -Infinity;
function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render(ts) {
  frame = 0;
  if (ts - lastDraw < RENDER_INTERVAL_MS) {
    scheduleRender(); // too soon: draw on a later frame
    return;
  }
  lastDraw = ts;
  const now = client.serverNow();
  jobs.render(store, now);
  scope.render(store, now);
  workers.render(store, now);
  queues.render(store, now);
  stats.render(store, now);
  actions.renderBulk(store);
  drawer.renderLost();
}

const client = new StreamClient({
  connectionId,
  resumeId: () => store.resumeId(),
  onEvent(type, id, data) {
    if (type === JOB_STATE_CHANGE) {
      drawer.onJobEvent(id, data);
      countsChanged();
    } else if (type === COMMAND_RESULT) {
      actions.onResult(data);
    }
    if (store.apply(type, id, data)) scheduleRender();
  },
  onReset() {
    // Our resume point is unusable (older than the retained history, or unknown to
    // this Redis): load everything again from the index and join from there.
    refresh(true);
  },
  onStatus(status) {
    showIndicator(root, status);
  },
});

function signedOut() {
  client.stop();
  goToLogin();
}

// ---- loading from the job index API ---------------------------------------------

let loadGen = 0;
let loadAbort = null;
let retryTimer = 0;
let retryAttempt = 0;
let needAll = true; // workers and queues are to be (re)loaded with the next page

function fetchJobs(filter, cursor, signal) {
  const params = filterToParams(filter);
  params.set("limit", String(PAGE_SIZE));
  if (cursor) params.set("cursor", cursor);
  return api(`${base}/jobs?${params}`, { signal });
}

/**
 * Load the first page for the current filter (and, with `all`, the workers and the
 * queues), then (re)join the stream from where those answers are up to date.
 */
async function refresh(all) {
  needAll = needAll || all;
  const withAll = needAll;
  const gen = ++loadGen;
  if (loadAbort) loadAbort.abort();
  const abort = new AbortController();
  loadAbort = abort;
  clearTimeout(retryTimer);
  client.pause();
  const filter = { ...view.filter };
  jobs.setBusy(false);
  jobs.setLoading(true);
  scheduleRender();
  const requests = [fetchJobs(filter, null, abort.signal)];
  if (withAll) requests.push(api(`${base}/workers`, { signal: abort.signal }), api(`${base}/queues`, { signal: abort.signal }));
  const [page, workerList, queueList] = await Promise.all(requests);
  if (gen !== loadGen) return;
  const failed = [page, workerList, queueList].find((r) => r && !r.ok);
  if (failed) {
    loadFailed(failed, () => refresh(withAll));
    return;
  }
  retryAttempt = 0;
  jobs.setError("");
  store.load(
    { jobs: page.data, workers: withAll ? workerList.data : null, queues: withAll ? queueList.data : null },
    { filter, baseline: !ready },
  );
  if (withAll) needAll = false;
  // The stream was paused while the page was read: its counts reflect every event
  // seen so far, no need to ask again for them.
  if (page.data && page.data.counts) cancelCounts();
  jobs.setLoading(false);
  client.resume();
  const first = !ready;
  ready = true;
  if (first) syncDrawer(false);
  // The stream now resumes from this snapshot: a drawer loaded before it may miss
  // what happened in between, so it loads again.
  else if (withAll && drawer.isOpen) drawer.reload();
  scheduleRender();
  // A filtered page may be short while older jobs match: fill the first screen.
  if (store.cursor && store.jobs.size < PAGE_SIZE) await more(gen, PAGE_SIZE - store.jobs.size);
}

function loadFailed(res, retry) {
  if (res.status === 401) {
    signedOut();
    return;
  }
  if (res.status === 404) {
    client.stop();
    client.setStatus("gone");
    jobs.setLoading(false);
    jobs.setError("This connection does not exist any more.");
    scheduleRender();
    return;
  }
  if (res.status === 400) {
    jobs.setLoading(false);
    jobs.setError(`${errorMessage(res)}: check the filters in the address.`);
    scheduleRender();
    return;
  }
  // Through the client, so that its "live" once the stream reopens is shown again.
  client.setStatus("reconnecting");
  const delay = Math.min(8000, 500 * 2 ** retryAttempt++);
  jobs.setError(`Could not load the jobs: ${errorMessage(res)} Trying again in ${Math.ceil(delay / 1000)} s…`);
  retryTimer = setTimeout(retry, delay);
  scheduleRender();
}

/**
 * Fetch older pages until `want` more jobs are listed, the history ends, or
 * MAX_ROUNDS requests were made. Returns how many were added, or -1 if the list
 * was reloaded meanwhile.
 */
async function more(gen, want) {
  jobs.setBusy(true);
  scheduleRender();
  const shownBefore = jobs.shown;
  let added = 0;
  for (let round = 0; round < MAX_ROUNDS && store.cursor && added < want; round++) {
    const res = await fetchJobs(store.filter, store.cursor, loadAbort ? loadAbort.signal : undefined);
    if (gen !== loadGen) return -1;
    if (res.status === 401) {
      signedOut();
      return -1;
    }
    if (!res.ok) {
      jobs.setError(`Could not load more jobs: ${errorMessage(res)}`);
      break;
    }
    jobs.setError("");
    // Jobs these pages hold were last updated before the first page was read: what
    // changed since comes on the stream (the store skips a job it already has).
    added += store.appendPage(res.data);
  }
  jobs.setBusy(false);
  jobs.showAtLeast(shownBefore + added);
  scheduleRender();
  return added;
}

// ---- the connection's job counts -------------------------------------------------

/** Counts are asked for at most this often while job events arrive. */
const COUNTS_INTERVAL_MS = 2000;
/** After the first event of a burst, wait this long for the rest of it. */
const COUNTS_SETTLE_MS = 250;
let countsTimer = 0;
let countsInFlight = false;
let countsWanted = false; // an event came after the last request was sent
let countsSentAt = -Infinity;
let countsFailures = 0; // in a row: the interval doubles, up to 16 times

/** A job event arrived: ask for the counts again, soon (a trailing, throttled request). */
function countsChanged() {
  countsWanted = true;
  if (countsTimer || countsInFlight) return; // that request, or the next one, will see it
  const now = performance.now();
  const interval = COUNTS_INTERVAL_MS * 2 ** Math.min(countsFailures, 4);
  const at = Math.max(now + COUNTS_SETTLE_MS, countsSentAt + interval);
  countsTimer = setTimeout(fetchCounts, at - now);
}

function cancelCounts() {
  clearTimeout(countsTimer);
  countsTimer = 0;
  countsWanted = false;
}

async function fetchCounts() {
  countsTimer = 0;
  if (!countsWanted) return;
  countsWanted = false;
  countsInFlight = true;
  countsSentAt = performance.now();
  const res = await api(`${base}/jobs?limit=1`);
  countsInFlight = false;
  if (res.status === 401) {
    signedOut();
    return;
  }
  if (res.status === 404) return; // the connection is gone: the page says so
  // An older answer than the counts held (a page loaded meanwhile) is ignored.
  if (res.ok && res.data && store.setCounts(res.data.counts, res.data.streamId)) scheduleRender();
  // Events that came during the request, or a failed one: ask again (not before
  // COUNTS_INTERVAL_MS after this request, longer after failures).
  if (res.ok) countsFailures = 0;
  else {
    countsFailures++;
    countsWanted = true;
  }
  if (countsWanted) {
    countsWanted = false;
    countsChanged();
  }
}

async function loadMore() {
  if (!ready || jobs.loading || jobs.busy) return;
  if (jobs.hidden > 0) {
    jobs.showMore(PAGE_SIZE); // already loaded, below the rows shown
    scheduleRender();
    return;
  }
  if (store.cursor) await more(loadGen, PAGE_SIZE);
}

// ---- the URL: filters and the open job ------------------------------------------

/**
 * Show `next` (a filter and an open job): a new history entry, or with `replace`
 * the current one. `kind` remembers why it was pushed ("drawer", "search").
 */
function go(next, { replace = false, kind = "" } = {}) {
  const url = viewUrl(next);
  if (url !== location.pathname + location.search) {
    const state = { sluice: 1, kind };
    if (replace) history.replaceState(state, "", url);
    else history.pushState(state, "", url);
  }
  sync(true);
}

/** Bring the page in line with the URL (after go(), or back/forward). */
function sync(focus) {
  const next = readLocation();
  const filterChanged = !sameFilter(next.filter, view.filter);
  view = next;
  showFilter();
  if (filterChanged) refresh(false);
  syncDrawer(focus);
}

let opener = null;
function syncDrawer(focus) {
  if (!ready) return;
  if (!view.job) {
    drawer.close();
    jobs.setOpen("");
    return;
  }
  if (view.job !== drawer.ref) drawer.open(view.job, { opener, focus });
  opener = null;
  jobs.setOpen(drawer.job ? drawer.job.id : view.job);
}

function openJob(jobId, from) {
  opener = from;
  if (view.job) go({ filter: view.filter, job: jobId }, { replace: true, kind: (history.state && history.state.kind) || "" });
  else go({ filter: view.filter, job: jobId }, { kind: "drawer" });
}

function closeJob() {
  // Opened from this page: going back closes it (and keeps back/forward tidy).
  if (history.state && history.state.kind === "drawer") history.back();
  else go({ filter: view.filter, job: "" }, { replace: true });
}

function showFilter() {
  jobs.setFilter(view.filter, isFiltered(view.filter));
  scope.setFilter(view.filter);
  actions.setFilter(view.filter);
  workers.setSelected(view.filter.worker);
  if (search.value.trim() !== view.filter.q) search.value = view.filter.q;
  scheduleRender();
}

window.addEventListener("popstate", () => sync(true));

// Links that change the filter (workers, queues, the drawer's worker/queue/task)
// are followed in the page; a modified click (new tab…) is left to the browser.
document.addEventListener("click", (ev) => {
  const a = ev.target instanceof Element ? ev.target.closest("a[data-nav]") : null;
  if (!a || isModifiedClick(ev)) return;
  ev.preventDefault();
  go(readLocation(new URL(a.href)));
});

document.addEventListener("keydown", (ev) => {
  if (ev.key !== "Escape" || !drawer.isOpen || ev.defaultPrevented) return;
  const t = ev.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  closeJob();
});

// Search: the job id, or a prefix of an external id or task name (server-side, `q`).
// Typing replaces the history entry it started, so back leaves the search at once.
const search = document.querySelector("[data-job-search]");
let searchTimer = 0;
function applySearch() {
  clearTimeout(searchTimer);
  const q = search.value.trim();
  if (q === view.filter.q) return;
  const typing = history.state && history.state.kind === "search";
  go({ filter: { ...view.filter, q }, job: view.job }, { replace: typing, kind: "search" });
}
search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(applySearch, 300);
});
search.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") applySearch();
});

// Type filters reopen the stream with ?types=…; what a hidden panel missed is loaded
// again from the index when it comes back, so everything is reloaded.
const typeBoxes = [...document.querySelectorAll("[data-type-filter]")];
function selectedTypes() {
  return typeBoxes.filter((b) => b.checked).map((b) => b.value);
}
for (const box of typeBoxes) {
  box.addEventListener("change", () => {
    const types = selectedTypes();
    for (const b of typeBoxes) b.disabled = b.checked && types.length === 1; // keep one at least
    root.classList.toggle("hide-jobs", !types.includes("job"));
    root.classList.toggle("hide-workers", !types.includes("worker"));
    root.classList.toggle("hide-queues", !types.includes("queue"));
    client.setTypes(types.length === typeBoxes.length ? null : types);
    refresh(true);
  });
}

setInterval(scheduleRender, 1000);

async function loadMeta() {
  const [config, list] = await Promise.all([api("/api/config"), api("/api/connections")]);
  if (config.ok && config.data) {
    client.setHeartbeatSeconds(Number(config.data.heartbeatSeconds));
    store.setWorkerExpirySeconds(Number(config.data.workerExpirySeconds));
    actions.setEnabled(config.data.readOnly !== true);
    scheduleRender();
  }
  if (list.status === 401) return signedOut();
  if (list.ok) {
    const conn = (list.data?.data || []).find((c) => c.id === connectionId);
    if (conn) {
      document.querySelector("[data-conn-name]").textContent = conn.name;
      document.title = `${conn.name} · Live · Sluice`;
      const fw = document.querySelector("[data-conn-framework]");
      fw.textContent = conn.framework;
      fw.className = `chip chip-${conn.framework}`;
      fw.hidden = false;
    }
  }
}

// The address as the page understands it (an unknown state is dropped, and so on).
history.replaceState({ sluice: 1, kind: "" }, "", viewUrl(view));
showFilter();
refresh(true);
loadMeta();
scheduleRender();
