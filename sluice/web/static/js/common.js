// Shared page behaviour: sign-out button, copy buttons, toast.
import { api } from "./api.js";

let toastTimer = 0;

/** Show a short status message (announced politely by screen readers). */
export function toast(message, ms = 2400) {
  const el = document.querySelector("[data-toast]");
  if (!el) return;
  el.textContent = message;
  el.hidden = false;
  el.classList.add("toast-show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.classList.remove("toast-show");
    el.hidden = true;
  }, ms);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (err) {
    // Clipboard API needs a secure context; fall back to a selection + execCommand.
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "sr-only";
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

function wireCopyButtons() {
  document.addEventListener("click", async (ev) => {
    const btn = ev.target instanceof Element ? ev.target.closest("[data-copy-target]") : null;
    if (!btn) return;
    const target = document.querySelector(btn.getAttribute("data-copy-target"));
    if (!target) return;
    const text = "value" in target && target.tagName === "INPUT" ? target.value : target.textContent;
    const ok = await copyText(text || "");
    const label = btn.dataset.label || btn.textContent;
    btn.dataset.label = label;
    btn.textContent = ok ? "Copied" : "Copy failed";
    btn.classList.toggle("is-done", ok);
    toast(ok ? "Copied to clipboard" : "Could not copy: select the text and copy it by hand");
    setTimeout(() => {
      btn.textContent = label;
      btn.classList.remove("is-done");
    }, 1600);
  });
}

function wireLogout() {
  for (const btn of document.querySelectorAll("[data-action=logout]")) {
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      await api("/api/auth/logout", { method: "POST", body: {} });
      location.assign("/login");
    });
  }
}

wireCopyButtons();
wireLogout();
