// Formatting helpers shared by the pages. All output goes through textContent.

const intFmt = new Intl.NumberFormat();
const rateFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export function formatInt(n) {
  return intFmt.format(n);
}

export function formatRate(n) {
  return n >= 100 ? intFmt.format(Math.round(n)) : rateFmt.format(n);
}

/** "850 ms", "4.2 s", "3 min 5 s", "2 h 10 min". */
export function formatDuration(ms) {
  if (ms == null || !Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m - h * 60} min`;
}

/** "3 s ago", "95 s ago", "4 min ago", "2 h ago". */
export function formatAgo(ms) {
  if (ms == null || !Number.isFinite(ms)) return "never";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 120) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m} min ago`;
  return `${Math.floor(m / 60)} h ago`;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

export function formatClock(ms) {
  if (ms == null || !Number.isFinite(ms)) return "";
  return timeFmt.format(new Date(ms));
}

const dateTimeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A date and time to the second, local time ("27 Feb 2026, 10:30:00"). */
export function formatDateTime(ms) {
  if (ms == null || !Number.isFinite(ms)) return "";
  return dateTimeFmt.format(new Date(ms));
}

export function formatDate(iso) {
  const t = Date.parse(iso);
  return Number.isFinite(t) ? dateFmt.format(new Date(t)) : "";
}

/** Parse an ISO timestamp to epoch ms, or null. */
export function parseTime(value) {
  if (typeof value !== "string" || !value) return null;
  const t = Date.parse(value);
  return Number.isFinite(t) ? t : null;
}
