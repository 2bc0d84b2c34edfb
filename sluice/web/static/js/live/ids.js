// Redis Stream entry ids ("<ms>-<seq>") are the SSE ids; they order every event.

/** @returns {[number, number] | null} */
export function parseId(id) {
  if (typeof id !== "string" || !id) return null;
  const dash = id.indexOf("-");
  const ms = Number(dash < 0 ? id : id.slice(0, dash));
  const seq = dash < 0 ? 0 : Number(id.slice(dash + 1));
  if (!Number.isFinite(ms) || !Number.isFinite(seq)) return null;
  return [ms, seq];
}

/** -1, 0 or 1, comparing two parsed ids. */
export function compareIds(a, b) {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
  return 0;
}
