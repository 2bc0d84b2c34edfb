import "./common.js";
import { api, errorMessage, goToLogin } from "./api.js";
import { toast } from "./common.js";
import { formatDate } from "./format.js";

const FRAMEWORKS = { celery: "Celery", bullmq: "BullMQ", sidekiq: "Sidekiq" };

const list = document.querySelector("[data-conn-list]");
const empty = document.querySelector("[data-conn-empty]");
const loading = document.querySelector("[data-conn-loading]");
const count = document.querySelector("[data-conn-count]");
const form = document.querySelector("[data-create-form]");
const formError = form.querySelector("[data-create-error]");
const submit = form.querySelector("[data-create-submit]");
const keyPanel = document.querySelector("[data-key-panel]");
const dialog = document.querySelector("[data-delete-dialog]");
const dialogError = dialog.querySelector("[data-delete-error]");
const confirmBtn = dialog.querySelector("[data-delete-confirm]");
const rotateDialog = document.querySelector("[data-rotate-dialog]");
const rotateError = rotateDialog.querySelector("[data-rotate-error]");
const rotateBtn = rotateDialog.querySelector("[data-rotate-confirm]");

/** @type {Array<{id: string, name: string, framework: string, createdAt: string}>} */
let connections = [];
let pendingDelete = null;
let pendingRotate = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function render() {
  loading.hidden = true;
  list.replaceChildren();
  empty.hidden = connections.length > 0;
  count.textContent = connections.length ? `${connections.length} total` : "";
  for (const c of connections) {
    const li = el("li", "conn-item");
    li.dataset.connectionId = c.id;
    const main = el("a", "conn-main");
    main.href = `/connections/${encodeURIComponent(c.id)}`;
    const name = el("span", "conn-name", c.name);
    const meta = el("span", "conn-meta muted");
    meta.append(
      el("span", `chip chip-${c.framework}`, FRAMEWORKS[c.framework] || c.framework),
      el("span", "mono small", c.id),
    );
    const created = formatDate(c.createdAt);
    if (created) meta.append(el("span", "small", `Created ${created}`));
    main.append(name, meta);
    const open = el("span", "conn-open", "Open live view →");
    open.setAttribute("aria-hidden", "true");
    main.append(open);
    const del = el("button", "btn btn-ghost btn-sm btn-danger-text", "Delete");
    del.type = "button";
    del.dataset.action = "delete";
    del.setAttribute("aria-label", `Delete connection ${c.name}`);
    del.addEventListener("click", () => askDelete(c));
    const rotate = el("button", "btn btn-ghost btn-sm", "Rotate key");
    rotate.type = "button";
    rotate.dataset.action = "rotate";
    rotate.setAttribute("aria-label", `Rotate the API key of connection ${c.name}`);
    rotate.addEventListener("click", () => askRotate(c));
    if (c.framework === "celery") {
      const setup = el("button", "btn btn-ghost btn-sm", "Connect Celery");
      setup.type = "button";
      setup.dataset.action = "celery-setup";
      setup.setAttribute("aria-label", `How to connect Celery to connection ${c.name}`);
      setup.addEventListener("click", () => showCelery(c, null));
      li.append(main, setup, rotate, del);
    } else {
      li.append(main, rotate, del);
    }
    list.append(li);
  }
}

async function load() {
  const res = await api("/api/connections");
  if (res.status === 401) return goToLogin();
  if (!res.ok) {
    loading.textContent = errorMessage(res, "Could not load connections.");
    return;
  }
  connections = (res.data && res.data.data) || [];
  render();
}

function curlExample(conn, apiKey) {
  const now = new Date().toISOString();
  const body = {
    events: [
      {
        type: "job_state_change",
        timestamp: now,
        framework: conn.framework || "celery",
        connectionId: conn.id,
        job: { externalId: "hello-1", name: "app.tasks.hello", state: "queued", queue: "default" },
      },
    ],
  };
  return [
    `curl -X POST ${location.origin}/api/ingest \\`,
    `  -H "Authorization: Bearer ${apiKey}" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d '${JSON.stringify(body, null, 2).replace(/\n/g, "\n  ")}'`,
  ].join("\n");
}

// -- connecting a Celery cluster: the agent's command and the install() snippet --

const celeryPanel = document.querySelector("[data-celery-panel]");
const brokerInput = celeryPanel.querySelector("[data-celery-broker]");
/** What the Celery panel shows: the connection and its key (null: not known here). */
let celeryFor = null;
/** Where the key is when the page does not have it (it is shown once). */
const KEY_PLACEHOLDER = "<YOUR_API_KEY>";

/** `value` as one shell word (single-quoted unless it is plainly safe). */
function shellWord(value) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, "'\\''")}'`;
}

function agentCommand(broker, apiKey) {
  return [
    "python -m sluice celery-agent \\",
    `  --broker ${shellWord(broker || "redis://localhost:6379/0")} \\`,
    `  --url ${shellWord(location.origin)} \\`,
    `  --api-key ${apiKey ? shellWord(apiKey) : KEY_PLACEHOLDER}`,
  ].join("\n");
}

function installSnippet(apiKey) {
  return [
    "import sluice.celery",
    "",
    "# after app = Celery(...)",
    `sluice.celery.install(app, url=${JSON.stringify(location.origin)}, api_key=${JSON.stringify(apiKey || KEY_PLACEHOLDER)})`,
  ].join("\n");
}

function renderCelery() {
  if (!celeryFor) return;
  const { conn, apiKey } = celeryFor;
  celeryPanel.querySelector("[data-celery-conn-name]").textContent = conn.name;
  celeryPanel.querySelector("[data-celery-key-note]").textContent = apiKey
    ? "These commands hold the connection's API key: keep them as safe as the key."
    : `Sluice shows a key only once, when the connection is created or its key rotated: put yours in place of ${KEY_PLACEHOLDER} (or use “Rotate key” for a new one; the old one then stops).`;
  celeryPanel.querySelector("[data-celery-agent]").textContent = agentCommand(brokerInput.value.trim(), apiKey);
  celeryPanel.querySelector("[data-celery-install]").textContent = installSnippet(apiKey);
}

function showCelery(conn, apiKey, focus = true) {
  celeryFor = { conn, apiKey };
  renderCelery();
  celeryPanel.hidden = false;
  if (focus) {
    celeryPanel.focus();
    celeryPanel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
}

function hideCelery() {
  celeryFor = null;
  celeryPanel.querySelector("[data-celery-agent]").textContent = "";
  celeryPanel.querySelector("[data-celery-install]").textContent = "";
  celeryPanel.hidden = true;
}

brokerInput.addEventListener("input", renderCelery);
celeryPanel.querySelector("[data-celery-dismiss]").addEventListener("click", hideCelery);

function showKey(conn) {
  keyPanel.querySelector("[data-key-conn-name]").textContent = conn.name;
  keyPanel.querySelector("[data-key-value]").value = conn.apiKey;
  keyPanel.querySelector("[data-curl]").textContent = curlExample(conn, conn.apiKey);
  keyPanel.hidden = false;
  keyPanel.focus();
  keyPanel.scrollIntoView({ block: "nearest", behavior: "smooth" });
  // A Celery connection: the agent's command and the install() snippet, with the key.
  if ((conn.framework || "celery") === "celery") showCelery(conn, conn.apiKey, false);
  else hideCelery();
}

keyPanel.querySelector("[data-key-dismiss]").addEventListener("click", () => {
  keyPanel.querySelector("[data-key-value]").value = "";
  keyPanel.querySelector("[data-curl]").textContent = "";
  keyPanel.hidden = true;
  if (celeryFor && celeryFor.apiKey) hideCelery(); // the key leaves the page with its panel
});

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  formError.hidden = true;
  const name = form.elements.name.value.trim();
  if (!name) {
    formError.textContent = "Give the connection a name.";
    formError.hidden = false;
    form.elements.name.focus();
    return;
  }
  submit.disabled = true;
  const res = await api("/api/connections", {
    method: "POST",
    body: { name, framework: form.elements.framework.value },
  });
  submit.disabled = false;
  if (res.status === 401) return goToLogin();
  if (!res.ok) {
    formError.textContent = errorMessage(res, "Could not create the connection.");
    formError.hidden = false;
    return;
  }
  const conn = res.data;
  form.reset();
  connections = [{ id: conn.id, name: conn.name, framework: conn.framework, createdAt: conn.createdAt }]
    .concat(connections.filter((c) => c.id !== conn.id));
  render();
  showKey(conn);
  toast(`Connection “${conn.name}” created`);
});

function askDelete(conn) {
  pendingDelete = conn;
  dialog.querySelector("[data-delete-name]").textContent = conn.name;
  dialogError.hidden = true;
  confirmBtn.disabled = false;
  dialog.showModal();
}

confirmBtn.addEventListener("click", async () => {
  if (!pendingDelete) return;
  const conn = pendingDelete;
  confirmBtn.disabled = true;
  const res = await api(`/api/connections/${encodeURIComponent(conn.id)}`, { method: "DELETE" });
  if (res.status === 401) return goToLogin();
  if (!res.ok && res.status !== 404) {
    confirmBtn.disabled = false;
    dialogError.textContent = errorMessage(res, "Could not delete the connection.");
    dialogError.hidden = false;
    return;
  }
  pendingDelete = null;
  dialog.close();
  connections = connections.filter((c) => c.id !== conn.id);
  render();
  toast(`Connection “${conn.name}” deleted`);
});

dialog.addEventListener("close", () => {
  pendingDelete = null;
});

function askRotate(conn) {
  pendingRotate = conn;
  rotateDialog.querySelector("[data-rotate-name]").textContent = conn.name;
  rotateError.hidden = true;
  rotateBtn.disabled = false;
  rotateDialog.showModal();
}

rotateBtn.addEventListener("click", async () => {
  if (!pendingRotate) return;
  const conn = pendingRotate;
  rotateBtn.disabled = true;
  const res = await api(`/api/connections/${encodeURIComponent(conn.id)}/rotate-key`, {
    method: "POST",
    body: {},
  });
  if (res.status === 401) return goToLogin();
  if (!res.ok) {
    rotateBtn.disabled = false;
    rotateError.textContent = errorMessage(res, "Could not rotate the key.");
    rotateError.hidden = false;
    return;
  }
  pendingRotate = null;
  rotateDialog.close();
  showKey({ ...conn, apiKey: res.data.apiKey });
  toast(`New API key for “${conn.name}”; the old one no longer works`);
});

rotateDialog.addEventListener("close", () => {
  pendingRotate = null;
});

load();
