// Entry point of the live view: wires the store, the stream client and the views.
//
// Events are applied to the in-memory store as they arrive (cheap); the DOM is
// updated inside an animation frame at most every 100 ms, plus a 1 s tick for the
// clocks ("N s ago", events/s).

import "./common.js";
import { api, goToLogin } from "./api.js";
import { Store } from "./live/store.js";
import { StreamClient } from "./live/stream.js";
import { JobsTable, QueuesPanel, Stats, WorkersPanel, showIndicator } from "./live/view.js";

const root = document.body;
const connectionId = root.dataset.connectionId;
const store = new Store();
const jobs = new JobsTable(root);
const workers = new WorkersPanel(root);
const queues = new QueuesPanel(root);
const stats = new Stats(root);

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
  jobs.render(store);
  workers.render(store, now);
  queues.render(store, now);
  stats.render(store, now);
}

function resetView() {
  store.reset();
  jobs.clear();
  workers.clear();
  queues.clear();
  scheduleRender();
}

const client = new StreamClient({
  connectionId,
  resumeId: () => store.resumeId(),
  onEvent(type, id, data) {
    if (store.apply(type, id, data)) scheduleRender();
  },
  onReset(reason) {
    // Our resume point is unusable: forget everything and rebuild. When it is older
    // than the retained history ("history_trimmed") the server replays what it still
    // has right after the reset; otherwise (e.g. Redis lost its data) ask for that
    // replay explicitly by reopening from the start.
    resetView();
    if (reason !== "history_trimmed") client.open();
  },
  onStatus(status) {
    showIndicator(root, status);
  },
});

// Type filters reopen the stream with ?types=…; the view restarts from the retained
// history so the panels that were filtered out are complete again when re-enabled.
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
    resetView();
    client.open();
  });
}

const search = document.querySelector("[data-job-search]");
let searchTimer = 0;
search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    jobs.setSearch(search.value);
    scheduleRender();
  }, 120);
});
document.querySelector("[data-state-chips]").addEventListener("click", () => scheduleRender());

setInterval(scheduleRender, 1000);

async function loadMeta() {
  const [config, list] = await Promise.all([api("/api/config"), api("/api/connections")]);
  if (config.ok && config.data) client.setHeartbeatSeconds(Number(config.data.heartbeatSeconds));
  if (list.status === 401) return goToLogin();
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

client.open(); // lastEventId=0: replay the retained history first, then live events
loadMeta();
scheduleRender();
