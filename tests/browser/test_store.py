"""The live view's store, run as the real ES module in Chromium: dedupe, joining a
snapshot from the job index API to the stream, filters, and derived figures."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

PRELUDE = """
  const { Store } = await import('/static/js/live/store.js');
  const ts = (sec) => new Date(Date.UTC(2026, 0, 1, 0, 0, sec)).toISOString();
  const job = (id, state, sec, extra = {}) => ({ id, externalId: id, name: 'n.' + id, state, timestamp: ts(sec), ...extra });
  const ids = (s, limit = 100) => s.visibleJobs(limit).rows.map(j => j.id);
"""

STREAM_ONLY = (
    "async () => {"
    + PRELUDE
    + """
  const s = new Store();
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
  out.order = ids(s);
  out.capped = (() => { const t = new Store(); for (let i = 0; i < 30; i++) t.apply('job:state_change', `${3000 + i}-0`, job('j' + i, 'queued', 0)); const v = t.visibleJobs(5); return { total: v.total, first: v.rows[0].id, n: v.rows.length }; })();
  // events/s counts by the entry id's time, so a burst after a reconnect is no spike.
  out.rateNow = s.rate(3000);  // 2 events in second 1 (ids 1000-x), 2 in second 2: 4 over 5 s
  out.rateLater = s.rate(60_000);
  s.apply('worker:heartbeat', '2001-0', { id: 'w', externalId: 'celery@h', hostname: 'h', state: 'busy', activeJobs: 2, timestamp: ts(4) });
  s.apply('worker:state_change', '2002-0', { id: 'w', hostname: 'h', state: 'offline', previousState: 'busy', timestamp: ts(5) });
  out.worker = { state: s.workers.get('w').state, activeJobs: s.workers.get('w').activeJobs, byExternal: s.workerByExternalId('celery@h')?.id };
  s.apply('queue:snapshot', '2003-0', { name: 'q', depth: 4, consumers: 1 });
  s.apply('queue:snapshot', '5003-0', { name: 'q', depth: 9, consumers: 1 });
  out.queue = { depth: s.queues.get('q').depth, points: s.queues.get('q').points.length };
  s.reset();
  out.afterReset = { events: s.eventCount, jobs: s.jobs.size, resume: s.resumeId(),
                     again: s.apply('job:state_change', '1000-0', job('a', 'queued', 0)) };
  return out;
}"""
)

JOIN = (
    "async () => {"
    + PRELUDE
    + """
  const s = new Store();
  const out = {};
  // Three answers, each read at its own moment: jobs up to 2000-0, workers 1500-0, queues 1800-0.
  s.load({
    jobs: { data: [job('p1', 'active', 0, { updatedAt: ts(9) }), job('p2', 'queued', 0)], nextCursor: '42', streamId: '2000-0' },
    workers: { data: [{ id: 'w', externalId: 'celery@w', hostname: 'w', state: 'online', activeJobs: 1, timestamp: ts(1) }], streamId: '1500-0' },
    queues: { data: [{ name: 'q', depth: 3, consumers: null, timestamp: ts(1) }], streamId: '1800-0' },
  }, { baseline: true });
  out.resume = s.resumeId();  // the stream opens from the oldest of the three
  out.cursor = s.cursor;
  // Entries the stream sends between 1500-0 and 2000-0: jobs already have them, the
  // others do not; none counts as received (the page was loaded after them).
  out.jobSkipped = s.apply('job:state_change', '1600-0', job('p1', 'failed', 5));
  out.p1 = s.jobs.get('p1').state;
  out.workerApplied = s.apply('worker:heartbeat', '1600-1', { id: 'w', externalId: 'celery@w', state: 'busy', activeJobs: 4, timestamp: ts(6) });
  out.queueSkipped = s.apply('queue:snapshot', '1700-0', { name: 'q', depth: 99 });
  out.queueApplied = s.apply('queue:snapshot', '1900-0', { name: 'q', depth: 7 });
  out.midway = { events: s.eventCount, active: s.workers.get('w').activeJobs, depth: s.queues.get('q').depth };
  // After 2000-0 everything applies, once; a new job goes on top.
  out.live = [
    s.apply('job:state_change', '2000-1', job('p1', 'completed', 7)),
    s.apply('job:state_change', '2000-2', job('n1', 'queued', 8)),
    s.apply('job:state_change', '2000-2', job('n1', 'queued', 8)),
  ];
  out.events = s.eventCount;
  out.resumeAfter = s.resumeId();
  out.order = ids(s);
  out.p1After = s.jobs.get('p1').state;
  // The next page: a job the list already has (it came on the stream) is skipped.
  out.added = s.appendPage({ data: [job('n1', 'queued', 0), job('p3', 'failed', 0)], nextCursor: null, streamId: '2100-0' });
  out.orderAfterPage = ids(s);
  out.n1 = s.jobs.get('n1').state;
  out.cursorAfter = s.cursor;
  return out;
}"""
)

FILTERS = (
    "async () => {"
    + PRELUDE
    + """
  const s = new Store();
  const out = {};
  const filter = { state: 'failed', queue: '', name: '', worker: '', q: '' };
  s.load({ jobs: { data: [job('f1', 'failed', 0)], nextCursor: null, streamId: '10-0' } }, { filter, baseline: true });
  s.apply('job:state_change', '11-0', job('c1', 'completed', 1));   // not for this list
  s.apply('job:state_change', '11-1', job('f2', 'failed', 1));      // joins on top
  out.order = ids(s);
  out.kept = s.jobs.has('c1');
  s.apply('job:state_change', '12-0', job('f1', 'retrying', 2));    // changes out of the filter
  out.afterChange = ids(s);
  out.listed = s.listed.total;
  s.apply('job:state_change', '13-0', job('f1', 'failed', 3));      // and back, in its place
  out.back = ids(s);
  // q: the job id, or a prefix of the external id or of the name (case-sensitive).
  const q = (text, d) => { const t = new Store(); t.resetJobs({ state: '', queue: '', name: '', worker: '', q: text }); t.apply('job:state_change', '1-0', d); return t.jobs.size === 1; };
  const d = { id: 'uuid-1', externalId: 'abc-123', name: 'billing.charge', state: 'queued', timestamp: ts(0) };
  out.q = [q('uuid-1', d), q('abc', d), q('billing.', d), q('charge', d), q('ABC', d), q('uuid', d)];
  // The latest event's fields decide, like the server's index.
  const t = new Store();
  t.resetJobs({ state: '', queue: 'emails', name: '', worker: '', q: '' });
  t.apply('job:state_change', '1-0', job('e1', 'queued', 0, { queue: 'emails' }));
  t.apply('job:state_change', '2-0', job('e1', 'active', 1, { workerId: 'w1' }));  // no queue sent
  out.queueLatest = ids(t);
  // Memory is bounded: past maxJobs the bottom goes, and the list no longer reaches the end.
  const small = new Store({ maxJobs: 3 });
  small.load({ jobs: { data: [job('h1', 'queued', 0), job('h2', 'queued', 0)], nextCursor: '5', streamId: '1-0' } });
  for (let i = 0; i < 3; i++) small.apply('job:state_change', `${2 + i}-0`, job('l' + i, 'queued', 0));
  out.small = { order: ids(small), trimmed: small.trimmed, cursor: small.cursor };
  return out;
}"""
)


def test_store_dedupes_and_derives(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(STREAM_ONLY)
    assert out["first"] is True
    assert out["sameId"] is False and out["olderId"] is False
    assert out["replayed"] == [False, False, False]
    assert out["events"] == 4 and out["jobs"] == 2
    assert out["stateA"] == "completed" and out["duration"] == 2000
    assert out["counts"]["completed"] == 1 and out["counts"]["failed"] == 1
    assert sum(out["counts"].values()) == 2
    assert out["resume"] == "2000-1"
    assert out["order"] == ["c", "a"]  # newest first
    assert out["capped"] == {"total": 30, "first": "j29", "n": 5}
    assert out["rateNow"] == pytest.approx(4 / 5)
    assert out["rateLater"] == 0
    assert out["worker"] == {"state": "offline", "activeJobs": 0, "byExternal": "w"}
    assert out["queue"] == {"depth": 9, "points": 2}
    assert out["afterReset"] == {"events": 0, "jobs": 0, "resume": None, "again": True}


def test_store_joins_snapshots_to_the_stream(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(JOIN)
    assert out["resume"] == "1500-0" and out["cursor"] == "42"
    assert out["jobSkipped"] is False and out["p1"] == "active"
    assert out["workerApplied"] is True
    assert out["queueSkipped"] is False and out["queueApplied"] is True
    assert out["midway"] == {"events": 0, "active": 4, "depth": 7}
    assert out["live"] == [True, True, False]
    assert out["events"] == 2
    assert out["resumeAfter"] == "2000-2"
    assert out["order"] == ["n1", "p1", "p2"]
    assert out["p1After"] == "completed"
    assert out["added"] == 1
    assert out["orderAfterPage"] == ["n1", "p1", "p2", "p3"]
    assert out["n1"] == "queued" and out["cursorAfter"] is None


def test_store_applies_the_list_filter_to_live_events(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(FILTERS)
    assert out["order"] == ["f2", "f1"]
    assert out["kept"] is False
    assert out["afterChange"] == ["f2"] and out["listed"] == 1
    assert out["back"] == ["f2", "f1"]
    assert out["q"] == [True, True, True, False, False, False]
    assert out["queueLatest"] == []
    assert out["small"] == {"order": ["l2", "l1", "l0"], "trimmed": True, "cursor": None}


COUNTS = (
    "async () => {"
    + PRELUDE
    + """
  const s = new Store();
  const out = {};
  const c = (total, extra) => ({ total, unknown: 0, queued: 0, scheduled: 0, active: 0, completed: 0, failed: 0, retrying: 0, cancelled: 0, ...extra });
  const pick = () => ({ total: s.counts.total, active: s.counts.active, failed: s.counts.failed, completed: s.counts.completed, queued: s.counts.queued });
  out.before = s.counts;
  // A first page that does not reach the end: its counts are the connection's.
  s.load({ jobs: { data: [job('a', 'active', 0), job('b', 'completed', 0)], nextCursor: '7', streamId: '100-0',
                   counts: c(50, { active: 5, completed: 30, failed: 15 }) } }, { baseline: true });
  out.loaded = pick();
  // A known job moves between counts at once; an unknown one (the list does not hold
  // every job) waits for the server.
  s.apply('job:state_change', '101-0', job('a', 'failed', 1));
  s.apply('job:state_change', '102-0', job('zz', 'failed', 2));
  out.optimistic = pick();
  // The server's answer wins: read at 102-0, it holds a's and zz's changes; b's
  // (103-0, guessed, came before the answer did) stays on top of it.
  s.apply('job:state_change', '103-0', job('b', 'failed', 3));
  out.taken = s.setCounts(c(51, { active: 4, completed: 30, failed: 17 }), '102-0');
  out.answered = pick();
  out.older = s.setCounts(c(1, {}), '101-5');                       // an older answer: ignored
  out.afterOlder = pick();
  // A later page (load more) carries newer counts: taken, guesses it reflects dropped.
  s.appendPage({ data: [job('c', 'queued', 0)], nextCursor: null, streamId: '103-0', counts: c(51, { active: 4, completed: 29, failed: 18 }) });
  out.paged = pick();
  // The list now reaches the end, unfiltered: a job it does not hold is a new one.
  s.apply('job:state_change', '104-0', job('new', 'queued', 4));
  out.newJob = pick();
  // An event the counts already reflect is not counted again.
  s.setCounts(c(60, { queued: 9 }), '200-0');
  s.apply('job:state_change', '150-0', job('c', 'active', 5));
  out.reflected = pick();
  // A filtered list (a new first page) keeps the connection's counts.
  s.load({ jobs: { data: [], nextCursor: null, streamId: '300-0', counts: c(61, { queued: 10 }) } },
         { filter: { state: 'failed', queue: '', name: '', worker: '', q: '' } });
  s.apply('job:state_change', '301-0', job('other', 'failed', 6));  // unknown: not guessed
  out.filtered = pick();
  out.reset = (s.reset(), s.counts);
  return out;
}"""
)


def test_store_counts_follow_the_server_with_optimistic_moves(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(COUNTS)
    assert out["before"] is None
    assert out["loaded"] == {"total": 50, "active": 5, "failed": 15, "completed": 30, "queued": 0}
    assert out["optimistic"] == {
        "total": 50, "active": 4, "failed": 16, "completed": 30, "queued": 0
    }  # fmt: skip
    assert out["taken"] is True
    # The answer's figures, plus b's move (after the answer's streamId).
    assert out["answered"] == {
        "total": 51, "active": 4, "failed": 18, "completed": 29, "queued": 0
    }  # fmt: skip
    assert out["older"] is False and out["afterOlder"] == out["answered"]
    assert out["paged"] == {"total": 51, "active": 4, "failed": 18, "completed": 29, "queued": 0}
    assert out["newJob"] == {"total": 52, "active": 4, "failed": 18, "completed": 29, "queued": 1}
    assert out["reflected"] == {"total": 60, "active": 0, "failed": 0, "completed": 0, "queued": 9}
    assert out["filtered"] == {"total": 61, "active": 0, "failed": 0, "completed": 0, "queued": 10}
    assert out["reset"] is None


LATE = (
    "async () => {"
    + PRELUDE
    + """
  const { eventAge, isLate } = await import('/static/js/live/store.js');
  const s = new Store();
  s.apply('job:state_change', '1000-0', job('a', 'completed', 5));
  // Another process's older event, arriving after: the job stays completed.
  s.apply('job:state_change', '1001-0', job('a', 'queued', 2));
  const late = s.jobs.get('a').state;
  // The same millisecond and attempt: an earlier step of the attempt is late
  // (a worker's `received` after its pool's `succeeded`).
  s.apply('job:state_change', '1002-0', job('a', 'queued', 5, { workerId: 'w1@h' }));
  const step = s.jobs.get('a').state;
  // The same millisecond, the next attempt: newer.
  s.apply('job:state_change', '1003-0', job('a', 'queued', 5, { attempt: 2 }));
  const retry = s.jobs.get('a').state;
  // The same age: the event that arrives last is the newest.
  s.apply('job:state_change', '1004-0', job('a', 'failed', 6, { attempt: 2 }));
  s.apply('job:state_change', '1005-0', job('a', 'completed', 6, { attempt: 2 }));
  const age = eventAge(job('x', 'retrying', 0, { attempt: 3 }));
  return { late, step, retry, state: s.jobs.get('a').state, counts: { ...s.stateCounts },
           events: s.eventCount, resume: s.resumeId(), age: [age[1], age[2]],
           rule: [isLate({ age: [10, 1, 0] }, [9, 1, 2]), isLate({ age: [10, 1, 2] }, [10, 1, 0]),
                  isLate({ age: [10, 2, 0] }, [10, 1, 2]), isLate({ age: [10, 1, 2] }, [10, 1, 2]),
                  isLate({ age: [10, 1, 0] }, [11, 1, 0]), isLate({ age: null }, [9, 1, 0]),
                  isLate({ age: [10, 1, 0] }, null)] };
}"""
)


def test_store_keeps_a_job_as_of_its_latest_event_by_time(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(LATE)
    assert (out["late"], out["step"], out["retry"]) == ("completed", "completed", "queued")
    assert out["state"] == "completed" and out["counts"]["completed"] == 1
    assert sum(out["counts"].values()) == 1
    assert out["events"] == 6 and out["resume"] == "1005-0"
    assert out["age"] == [3, 2]
    assert out["rule"] == [True, True, True, False, False, False, False]


UNKNOWN_EVENTS = (
    "async () => {"
    + PRELUDE
    + """
  const s = new Store();
  s.load({ jobs: { data: [job('a', 'queued', 0)], streamId: '1000-0' } }, { baseline: true });
  const out = {};
  // An action's result, and a name this page has never heard of: neither is a job,
  // a worker or a queue, nothing throws, and the resume point moves past them.
  out.command = s.apply('command:result', '1001-0', { commandId: 'c1', action: 'retry', status: 'done', detail: { newJobId: 'x' } });
  out.future = s.apply('something:new', '1002-0', { id: 'a', state: 'failed', name: 'n.a' });
  out.noData = s.apply('something:new', '1003-0', null);
  out.notJson = s.apply('command:result', '1003-1', 'text');
  out.jobs = s.jobs.size;
  out.a = s.jobs.get('a').state;
  out.workers = s.workers.size;
  out.queues = s.queues.size;
  out.resume = s.resumeId();
  // Job events go on as before.
  out.after = s.apply('job:state_change', '1004-0', job('a', 'active', 1));
  out.aAfter = s.jobs.get('a').state;
  return out;
}"""
)


def test_store_ignores_event_names_it_does_not_know(server, page):
    page.goto(server.url + "/login")
    out = page.evaluate(UNKNOWN_EVENTS)
    assert out["command"] is True and out["future"] is True  # counted as received
    assert out["noData"] is False and out["notJson"] is False
    assert (out["jobs"], out["a"], out["workers"], out["queues"]) == (1, "queued", 0, 0)
    assert out["resume"] == "1002-0"
    assert out["after"] is True and out["aAfter"] == "active"
