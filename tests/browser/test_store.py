"""The live view's store, run as the real ES module in Chromium: dedupe and derived figures."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

SCRIPT = """async () => {
  const { Store } = await import('/static/js/live/store.js');
  const s = new Store();
  const ts = (sec) => new Date(Date.UTC(2026, 0, 1, 0, 0, sec)).toISOString();
  const job = (id, state, sec, extra = {}) => ({ id, externalId: id, name: 'n.' + id, state, timestamp: ts(sec), ...extra });
  const out = {};
  out.first = s.apply('job:state_change', '1000-0', job('a', 'queued', 0));
  out.sameId = s.apply('job:state_change', '1000-0', job('a', 'queued', 0));
  out.olderId = s.apply('job:state_change', '999-5', job('b', 'queued', 0));
  s.apply('job:state_change', '1000-1', job('a', 'active', 1));
  s.apply('job:state_change', '2000-0', job('a', 'completed', 3, { error: null }));
  s.apply('job:state_change', '2000-1', job('c', 'failed', 3, { error: 'boom' }));
  // A resume that replays what was already applied changes nothing.
  const replay = [['1000-0', job('a', 'queued', 0)], ['1000-1', job('a', 'active', 1)], ['2000-0', job('a', 'completed', 3)]];
  out.replayed = replay.map(([id, d]) => s.apply('job:state_change', id, d));
  out.events = s.eventCount;
  out.jobs = s.jobs.size;
  out.stateA = s.jobs.get('a').state;
  out.duration = Store.duration(s.jobs.get('a'));
  out.counts = { ...s.stateCounts };
  out.resume = s.resumeId();
  out.order = s.visibleJobs({ state: '', search: '' }, 10).rows.map(j => j.id);
  out.search = s.visibleJobs({ state: '', search: 'N.C' }, 10);
  out.search = { total: out.search.total, ids: out.search.rows.map(j => j.id) };
  out.capped = (() => { const t = new Store(); for (let i = 0; i < 30; i++) t.apply('job:state_change', `${3000 + i}-0`, job('j' + i, 'queued', 0)); const v = t.visibleJobs({ state: '', search: '' }, 5); return { total: v.total, first: v.rows[0].id, n: v.rows.length }; })();
  // events/s counts by the entry id's time, so a replayed backlog is no burst.
  out.rateNow = s.rate(3000);  // 2 events in second 1 (ids 1000-x), 2 in second 2: 4 over 5 s
  out.rateLater = s.rate(60_000);
  s.apply('worker:heartbeat', '2001-0', { id: 'w', hostname: 'h', state: 'busy', activeJobs: 2, timestamp: ts(4) });
  s.apply('worker:state_change', '2002-0', { id: 'w', hostname: 'h', state: 'offline', previousState: 'busy', timestamp: ts(5) });
  out.worker = { state: s.workers.get('w').state, activeJobs: s.workers.get('w').activeJobs };
  s.apply('queue:snapshot', '2003-0', { name: 'q', depth: 4, consumers: 1 });
  s.apply('queue:snapshot', '5003-0', { name: 'q', depth: 9, consumers: 1 });
  out.queue = { depth: s.queues.get('q').depth, points: s.queues.get('q').points.length };
  s.reset();
  out.afterReset = { events: s.eventCount, jobs: s.jobs.size, resume: s.resumeId(),
                     again: s.apply('job:state_change', '1000-0', job('a', 'queued', 0)) };
  return out;
}"""


def test_store_dedupes_and_derives(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(SCRIPT)
    assert out["first"] is True
    assert out["sameId"] is False and out["olderId"] is False
    assert out["replayed"] == [False, False, False]
    assert out["events"] == 4 and out["jobs"] == 2
    assert out["stateA"] == "completed" and out["duration"] == 2000
    assert out["counts"]["completed"] == 1 and out["counts"]["failed"] == 1
    assert sum(out["counts"].values()) == 2
    assert out["resume"] == "2000-1"
    assert out["order"] == ["c", "a"]  # newest first
    assert out["search"] == {"total": 1, "ids": ["c"]}
    assert out["capped"] == {"total": 30, "first": "j29", "n": 5}
    assert out["rateNow"] == pytest.approx(4 / 5)
    assert out["rateLater"] == 0
    assert out["worker"] == {"state": "offline", "activeJobs": 0}
    assert out["queue"] == {"depth": 9, "points": 2}
    assert out["afterReset"] == {"events": 0, "jobs": 0, "resume": "0", "again": True}
