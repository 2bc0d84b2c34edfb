// The EventSource client: opens /api/events/stream, resumes after drops, notices sign-out.
//
// A browser EventSource gives up for good on a non-200 answer (401 after the session
// expired, 404 after the connection was deleted), and on a dropped connection it
// retries the *original* URL. So on every error this client closes the EventSource
// itself and opens a new one, with `lastEventId=<last id applied>` in the query (a new
// EventSource cannot carry a Last-Event-ID header). Before reopening it asks
// GET /api/auth/me: 401 means signed out (go to the login page), a network error
// means the server is away (back off and try again).
//
// The page opens the stream only once it has loaded its snapshot from the job index
// API, from the id that snapshot is up to date with (`resumeId()`); while it reloads
// one (a new filter, a `stream:reset`) the stream is paused.

import { api, goToLogin } from "../api.js";
import * as contract from "../contract.js";

const { EVENT_NAMES, HEARTBEAT, STREAM_RESET } = contract;
/** An operator action's outcome (docs/api.md, "Actions"), category `command`. */
export const COMMAND_RESULT = contract.COMMAND_RESULT || "command:result";
/** Whether this server streams command results (its `types` then know `command`). */
const COMMANDS = EVENT_NAMES.includes(COMMAND_RESULT);
/** Every stored event name the page listens to: the contract's, and command results. */
const EVENT_TYPES = COMMANDS ? EVENT_NAMES : [...EVENT_NAMES, COMMAND_RESULT];

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 8000;

/**
 * Status values: "connecting", "live", "reconnecting", "stale", "signed-out", "gone".
 */
export class StreamClient {
  /**
   * @param {{
   *   connectionId: string,
   *   resumeId: () => string | null,
   *   onEvent: (type: string, id: string, data: any) => void,
   *   onReset: (reason: string) => void,
   *   onStatus: (status: string, detail?: string) => void,
   *   onBytes?: () => void,
   * }} opts
   */
  constructor(opts) {
    this.opts = opts;
    this.heartbeatSeconds = 15;
    this.types = null; // null = all
    this.es = null;
    this.status = "";
    this.attempt = 0;
    this.timer = 0;
    this.lastBytesAt = 0;
    this.lastHeartbeatAt = 0;
    this.serverOffsetMs = 0; // client clock minus server clock, from heartbeats
    this.generation = 0;
    this.stopped = false;
    this.paused = true; // until the first snapshot is loaded
    this.watchdog = setInterval(() => this.checkStale(), 1000);
  }

  setHeartbeatSeconds(n) {
    if (Number.isFinite(n) && n > 0) this.heartbeatSeconds = n;
  }

  /** Server time now (ms), for "N s ago" and events/s. */
  serverNow() {
    return Date.now() - this.serverOffsetMs;
  }

  /** Open (or reopen) the stream now, resuming from the store's resume id. */
  open() {
    this.closeSource();
    clearTimeout(this.timer);
    if (this.stopped || this.paused) return;
    const gen = ++this.generation;
    const params = new URLSearchParams({ connectionId: this.opts.connectionId });
    const resume = this.opts.resumeId();
    if (resume) params.set("lastEventId", resume);
    if (this.types) params.set("types", this.types.join(","));
    const es = new EventSource(`/api/events/stream?${params}`, { withCredentials: true });
    this.es = es;
    if (!this.status || this.status === "signed-out") this.setStatus("connecting");

    const alive = () => gen === this.generation;
    es.onopen = () => {
      if (!alive()) return;
      this.attempt = 0;
      this.touch();
      this.setStatus("live");
    };
    es.onerror = () => {
      if (!alive()) return;
      const closed = es.readyState === EventSource.CLOSED;
      this.closeSource();
      this.scheduleReconnect(closed);
    };
    const handler = (ev) => {
      if (!alive()) return;
      this.touch();
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      this.opts.onEvent(ev.type, ev.lastEventId || "", data);
    };
    for (const t of EVENT_TYPES) es.addEventListener(t, handler);
    es.addEventListener(HEARTBEAT, (ev) => {
      if (!alive()) return;
      this.touch();
      this.lastHeartbeatAt = Date.now();
      try {
        const ts = Date.parse(JSON.parse(ev.data).timestamp);
        if (Number.isFinite(ts)) this.serverOffsetMs = Date.now() - ts;
      } catch (err) {
        /* a heartbeat without a timestamp still proves liveness */
      }
    });
    es.addEventListener(STREAM_RESET, (ev) => {
      if (!alive()) return;
      this.touch();
      let reason = "";
      try {
        reason = JSON.parse(ev.data).reason || "";
      } catch (err) {
        reason = "";
      }
      this.opts.onReset(reason);
    });
  }

  /** Close the stream until resume(): nothing is delivered meanwhile. */
  pause() {
    this.paused = true;
    this.generation++; // late callbacks of the closed source are ignored
    this.closeSource();
    clearTimeout(this.timer);
  }

  /** Open the stream again, from the store's resume id. */
  resume() {
    this.paused = false;
    this.open();
  }

  /**
   * Change the type filter (null or [] = all); takes effect at the next open. The
   * `command` category is always added: the page's actions wait for their results.
   */
  setTypes(types) {
    this.types = types && types.length ? types : null;
    if (this.types && COMMANDS && !this.types.includes("command")) this.types = [...this.types, "command"];
  }

  touch() {
    this.lastBytesAt = Date.now();
    if (this.status === "stale") this.setStatus("live");
  }

  setStatus(status, detail) {
    if (status === this.status && !detail) return;
    this.status = status;
    this.opts.onStatus(status, detail);
  }

  closeSource() {
    if (this.es) {
      this.es.onopen = null;
      this.es.onerror = null;
      this.es.close();
      this.es = null;
    }
  }

  stop() {
    this.stopped = true;
    this.closeSource();
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
  }

  scheduleReconnect(wasClosed) {
    if (this.stopped || this.paused) return;
    clearTimeout(this.timer);
    this.setStatus("reconnecting");
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = this.attempt === 0 ? BACKOFF_MIN_MS : base / 2 + Math.random() * (base / 2);
    this.attempt++;
    const gen = this.generation;
    this.timer = setTimeout(() => this.reconnect(gen, wasClosed), delay);
  }

  async reconnect(gen, wasClosed) {
    if (this.stopped || this.paused || gen !== this.generation) return;
    const me = await api("/api/auth/me");
    if (this.stopped || gen !== this.generation) return;
    if (me.status === 401) {
      this.stop();
      this.setStatus("signed-out");
      goToLogin();
      return;
    }
    if (!me.ok) {
      this.scheduleReconnect(wasClosed); // server away or unwell: back off
      return;
    }
    if (wasClosed) {
      // The stream itself was refused while the session is fine: was the connection deleted?
      const list = await api("/api/connections");
      if (this.stopped || gen !== this.generation) return;
      if (list.ok && !(list.data?.data || []).some((c) => c.id === this.opts.connectionId)) {
        this.stop();
        this.setStatus("gone");
        return;
      }
    }
    this.open();
  }

  /** "stale" after 2 × heartbeat without a byte; reopen after 4 ×. */
  checkStale() {
    if (this.stopped || !this.es || !this.lastBytesAt) return;
    if (this.status !== "live" && this.status !== "stale") return;
    const quiet = Date.now() - this.lastBytesAt;
    const hb = this.heartbeatSeconds * 1000;
    if (quiet > 4 * hb) {
      this.closeSource();
      this.scheduleReconnect(false);
    } else if (quiet > 2 * hb && this.status === "live") {
      this.setStatus("stale");
    }
  }
}
