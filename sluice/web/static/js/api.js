// Small fetch wrapper for the JSON API. Errors follow the contract:
// {"error": {"code", "message", "details"}}; this module never throws on HTTP errors.

/**
 * @param {string} path
 * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [opts]
 * @returns {Promise<{ok: boolean, status: number, data: any, networkError?: boolean}>}
 */
export async function api(path, opts = {}) {
  const method = opts.method || "GET";
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store", signal: opts.signal };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-Requested-With"] = "fetch";
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: null, networkError: true };
  }
  let data = null;
  if (res.status !== 204) {
    const type = res.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        data = await res.json();
      } catch (err) {
        data = null;
      }
    }
  }
  return { ok: res.ok, status: res.status, data };
}

/** A human sentence for a failed api() result. */
export function errorMessage(result, fallback = "Something went wrong. Please try again.") {
  if (result.networkError) return "Cannot reach the server. Check your connection and try again.";
  const err = result.data && result.data.error;
  if (err && typeof err.message === "string" && err.message) return err.message;
  if (result.status === 429) return "Too many attempts. Please wait a moment and try again.";
  if (result.status >= 500) return "The server had a problem. Please try again in a moment.";
  return fallback;
}

/** Send the browser to the login page, coming back here afterwards. */
export function goToLogin() {
  const next = location.pathname + location.search;
  location.assign("/login?next=" + encodeURIComponent(next).replace(/%2F/g, "/"));
}
