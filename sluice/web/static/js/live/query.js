// The jobs list's filters: what the URL says, what the API is asked, and the same
// test applied to live events (so a live event the server would not list is not shown).
//
// The URL of the live view is the whole state worth sharing:
//   /connections/<id>?state=failed&queue=emails&name=…&worker=…&q=…&job=<job id>
// Unknown parameters are ignored, an unknown state is dropped.

import { JOB_STATES } from "../contract.js";

/** The filters the jobs API takes, in the order they appear in a URL. */
export const FILTER_KEYS = ["state", "queue", "name", "worker", "q"];
/** What the API accepts per value (longer is a 400). */
export const MAX_VALUE = 1024;

/** @typedef {{state: string, queue: string, name: string, worker: string, q: string}} Filter */

/** @returns {Filter} */
export function emptyFilter() {
  return { state: "", queue: "", name: "", worker: "", q: "" };
}

/** @param {URLSearchParams} params @returns {Filter} */
export function filterFromParams(params) {
  const f = emptyFilter();
  for (const key of FILTER_KEYS) {
    const value = params.get(key) || "";
    f[key] = value.length > MAX_VALUE ? value.slice(0, MAX_VALUE) : value;
  }
  if (!JOB_STATES.includes(f.state)) f.state = "";
  return f;
}

/** The filter's parameters (only those set), appended to `params`. */
export function filterToParams(filter, params = new URLSearchParams()) {
  for (const key of FILTER_KEYS) if (filter[key]) params.set(key, filter[key]);
  return params;
}

export function sameFilter(a, b) {
  return FILTER_KEYS.every((key) => (a[key] || "") === (b[key] || ""));
}

export function isFiltered(filter) {
  return FILTER_KEYS.some((key) => filter[key]);
}

/**
 * Whether a job belongs in the list, judged like the server does: on its latest
 * event's fields (`state`, `queue`, `name`, `workerId`), exact; `q` is the job id
 * itself or a prefix of its external id or of its task name (case-sensitive).
 * @param {Filter} f
 * @param {{id?: string, externalId?: string, name?: string, state?: string, queue?: string, workerId?: string}} job
 */
export function matchesFilter(f, job) {
  if (f.state && job.state !== f.state) return false;
  if (f.queue && (job.queue || "") !== f.queue) return false;
  if (f.name && job.name !== f.name) return false;
  if (f.worker && (job.workerId || "") !== f.worker) return false;
  if (f.q) {
    const q = f.q;
    const byId = job.id === q;
    const byExternal = typeof job.externalId === "string" && job.externalId.startsWith(q);
    const byName = typeof job.name === "string" && job.name.startsWith(q);
    if (!byId && !byExternal && !byName) return false;
  }
  return true;
}

/**
 * The view's state from a location: its filter and the job whose details are open.
 * @returns {{filter: Filter, job: string}}
 */
export function readLocation(loc = window.location) {
  const params = new URLSearchParams(loc.search);
  const job = params.get("job") || "";
  return { filter: filterFromParams(params), job: job.length > MAX_VALUE ? "" : job };
}

/** The path + query for a view state (`job` last, so filter links stay readable). */
export function viewUrl({ filter, job }, path = window.location.pathname) {
  const params = filterToParams(filter || emptyFilter());
  if (job) params.set("job", job);
  const search = params.toString();
  return search ? `${path}?${search}` : path;
}
