"""IngestSender over a real socket: batching, retries, splitting, bounded buffer, fork."""

from __future__ import annotations

import os
import time

from sluice.client.ingest import DEFAULT_BATCH, DEFAULT_LINGER, IngestSender
from tests.util import wait_until


def ev(i: int) -> dict:
    return {"id": f"e-{i}", "type": "queue_snapshot", "n": i}


def test_delivers_in_order_with_auth(capture):
    s = IngestSender(capture.url, "sk_live_x", batch_size=7)
    s.submit_many(ev(i) for i in range(50))
    assert s.flush(10)
    assert [e["n"] for e in capture.events] == list(range(50))
    assert all(len(b) <= 7 for b in capture.batches)
    assert set(capture.auth) == {"Bearer sk_live_x"}
    assert s.stats.accepted == 50 and s.pending() == 0
    s.close()


def test_retries_after_failures_without_duplicates(capture):
    capture.statuses = [503, 502, 429, 500]
    s = IngestSender(capture.url, "k", backoff_initial=0.01, backoff_max=0.05)
    s.submit_many(ev(i) for i in range(10))
    assert s.flush(10)
    assert [e["n"] for e in capture.events] == list(range(10))
    assert s.stats.failed_posts == 4 and s.stats.duplicates == 0
    s.close()


def test_a_resent_batch_is_counted_as_duplicates(capture):
    s = IngestSender(capture.url, "k")
    s.submit_many([ev(1), ev(2)])
    assert s.flush(5)
    s.submit_many([ev(1), ev(2), ev(3)])  # e.g. a response lost after the server appended
    assert s.flush(5)
    assert [e["n"] for e in capture.events] == [1, 2, 3]
    assert s.stats.duplicates == 2
    s.close()


def test_invalid_event_is_isolated_and_dropped_alone(capture):
    capture.reject_if = lambda e: e["n"] == 5
    s = IngestSender(capture.url, "k", batch_size=16)
    s.submit_many(ev(i) for i in range(12))
    assert s.flush(10)
    assert [e["n"] for e in capture.events] == [i for i in range(12) if i != 5]
    assert s.stats.rejected == 1
    s.close()


def test_unreachable_server_keeps_the_newest_and_counts_drops(capture):
    url = capture.url
    capture.close()  # nothing listens there now
    s = IngestSender(
        url, "k", max_buffer=100, batch_size=10, backoff_initial=0.01, backoff_max=0.02
    )
    s.submit_many(ev(i) for i in range(1000))
    deadline = time.monotonic() + 5
    while s.stats.failed_posts < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.pending() <= 110  # buffer + one batch in flight: memory stays bounded
    assert s.stats.dropped >= 890
    assert not s.close(timeout=0.2)


def test_submit_never_raises_nor_blocks_on_a_dead_server():
    s = IngestSender("http://127.0.0.1:9", "k", backoff_initial=5, timeout=5)
    started = time.monotonic()
    for i in range(10_000):
        s.submit(ev(i))
    assert time.monotonic() - started < 2.0
    s.close(timeout=0.1)


def test_forked_child_sends_its_own_events_only(capture):
    s = IngestSender(capture.url, "k")
    s.submit(ev(1))
    assert s.flush(5)
    pid = os.fork()
    if pid == 0:  # child: fresh buffer and thread, parent's socket untouched
        code = 1
        try:
            s.submit(ev(100))
            code = 0 if s.flush(5) and s.stats.accepted == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    s.submit(ev(2))
    assert s.flush(5)
    assert [e["n"] for e in capture.events] == [1, 100, 2]
    s.close()


def test_events_that_trickle_in_go_in_batches_after_the_linger(capture):
    s = IngestSender(capture.url, "k", linger=0.3)
    started = time.monotonic()
    for i in range(20):  # 20 events over about 0.2 s: one request, not twenty
        s.submit(ev(i))
        time.sleep(0.01)
    capture.wait_for(lambda events: len(events) == 20, timeout=5)
    assert time.monotonic() - started >= 0.3  # held until the oldest had waited the linger
    assert s.flush(5)
    assert capture.requests <= 2 and s.stats.posts == capture.requests
    assert [e["n"] for e in capture.events] == list(range(20))
    s.close()


def test_a_full_batch_goes_at_once_and_flush_does_not_wait_for_the_linger(capture):
    assert DEFAULT_BATCH == 100 and DEFAULT_LINGER == 0.2  # as documented
    s = IngestSender(capture.url, "k", batch_size=10, linger=30)
    s.submit_many(ev(i) for i in range(25))
    capture.wait_for(lambda events: len(events) >= 20, timeout=5)  # two full batches
    wait_until(lambda: s.pending() == 5, 5, "the two batches acknowledged")
    assert [len(b) for b in capture.batches] == [10, 10]  # the rest lingers...
    assert s.flush(5)  # ...until a flush (worker and pool-process shutdown) sends it
    assert [e["n"] for e in capture.events] == list(range(25))
    s.close()


def test_a_429_keeps_the_batch_and_waits_for_retry_after(capture):
    capture.statuses = [429]
    capture.retry_after = "0.5"
    s = IngestSender(capture.url, "k", backoff_initial=0.01, linger=0)
    s.submit_many(ev(i) for i in range(5))
    assert s.flush(10)
    assert [e["n"] for e in capture.events] == list(range(5))  # the same batch, in order
    assert len(capture.request_times) == 2
    assert capture.request_times[1] - capture.request_times[0] >= 0.5
    assert s.stats.rate_limited == 1 and s.stats.dropped == 0 and s.stats.accepted == 5
    assert "1 rate-limited (429)" in s.summary()
    s.close()
