"""The worker liveness rule (sluice.liveness): offline when it said so, or when its
last event is older than the expiry; decided on read, the same for every reader."""

from __future__ import annotations

import pytest

from sluice.liveness import (
    HEARTBEAT_EXPIRED,
    effective,
    expired,
    held_by_worker,
    lost,
    silent_ms,
    timestamp_ms,
    worker_online,
)

NOW = 1_772_188_200_000  # 2026-02-27T10:30:00.000Z


def at(seconds_before: float) -> str:
    from sluice.timefmt import iso_from_ms

    return iso_from_ms(NOW - int(seconds_before * 1000))


def test_timestamps_are_read_to_the_millisecond():
    assert timestamp_ms("2026-02-27T10:30:00.000Z") == NOW
    assert timestamp_ms("2026-02-27T10:29:59.999Z") == NOW - 1
    for bad in (None, 17, "", "2026-02-27T10:30:00", "yesterday Z", "2026-13-01T00:00:00.000Z"):
        assert timestamp_ms(bad) is None


@pytest.mark.parametrize("state", ["online", "busy", "idle"])
def test_a_worker_is_online_until_its_expiry_and_offline_after(state):
    assert worker_online({"state": state, "timestamp": at(0)}, NOW, 30)
    assert worker_online({"state": state, "timestamp": at(30)}, NOW, 30)  # exactly: still in time
    assert not worker_online({"state": state, "timestamp": at(30.001)}, NOW, 30)
    assert expired({"state": state, "timestamp": at(31)}, NOW, 30)
    assert not worker_online({"state": state, "timestamp": at(3600)}, NOW, 30)


def test_offline_said_is_offline_at_once_and_never_expired():
    snapshot = {"state": "offline", "timestamp": at(0)}
    assert not worker_online(snapshot, NOW, 30)
    assert not expired(snapshot, NOW, 30)
    assert not expired({"state": "offline", "timestamp": at(3600)}, NOW, 30)


def test_future_timestamps_count_as_now_and_missing_ones_never_expire():
    assert silent_ms({"timestamp": at(-60)}, NOW) == 0
    assert worker_online({"state": "busy", "timestamp": at(-60)}, NOW, 30)
    assert silent_ms({"state": "busy"}, NOW) is None
    assert worker_online({"state": "busy"}, NOW, 30)


def test_effective_snapshot_says_why_it_is_offline():
    fresh = {"id": "x", "externalId": "w1@h", "state": "busy", "activeJobs": 2, "timestamp": at(5)}
    assert effective(fresh, NOW, 30) == {**fresh, "expired": False}
    stale = {**fresh, "timestamp": at(95.5)}
    assert effective(stale, NOW, 30) == {
        **stale,
        "state": "offline",
        "reportedState": "busy",
        "expired": True,
        "offlineReason": HEARTBEAT_EXPIRED,
        "silentSeconds": 95,
    }
    assert stale["state"] == "busy"  # the snapshot itself is not changed
    said = {**fresh, "state": "offline", "timestamp": at(95)}
    assert effective(said, NOW, 30) == {**said, "expired": False}


def test_a_workers_detail_is_answered_as_last_reported_online_or_expired():
    detail = {
        "pool": "prefork", "concurrency": 2, "queues": ["a", "b"], "processed": 9,
        "reservedJobs": 3, "registered": ["tasks.add"],
    }  # fmt: skip
    fresh = {"id": "x", "externalId": "w1@h", "state": "busy", "timestamp": at(5), **detail}
    assert effective(fresh, NOW, 30) == {**fresh, "expired": False}
    gone = effective({**fresh, "timestamp": at(60)}, NOW, 30)
    assert gone["state"] == "offline" and gone["expired"] is True
    # What it held when it went silent (now lost) and what it was stay as it said them.
    assert {k: gone[k] for k in detail} == detail


def test_a_job_is_held_by_the_worker_it_runs_on_or_that_received_it():
    assert held_by_worker({"state": "active", "workerId": "w1@h"}) == "w1@h"
    assert held_by_worker({"state": "queued", "workerId": "w1@h"}) == "w1@h"  # reserved
    assert held_by_worker({"state": "scheduled", "workerId": "w1@h"}) == "w1@h"  # ETA, held
    assert held_by_worker({"state": "queued"}) is None  # in the broker
    assert held_by_worker({"state": "active", "workerId": ""}) is None
    for state in ("completed", "failed", "retrying", "cancelled", "unknown"):
        assert held_by_worker({"state": state, "workerId": "w1@h"}) is None


def test_a_job_is_lost_when_its_worker_is_offline_said_or_expired():
    job = {"state": "active", "workerId": "w1@h"}
    online = {"state": "busy", "timestamp": at(1)}
    assert not lost(job, online, NOW, 30)
    assert lost(job, {"state": "offline", "timestamp": at(1)}, NOW, 30)  # said goodbye
    assert lost(job, {"state": "busy", "timestamp": at(31)}, NOW, 30)  # heartbeats stopped
    assert lost({"state": "queued", "workerId": "w1@h"}, {"state": "offline"}, NOW, 30)
    assert not lost(job, None, NOW, 30)  # a worker never seen: nothing known
    assert not lost({"state": "completed", "workerId": "w1@h"}, {"state": "offline"}, NOW, 30)
    assert not lost({"state": "queued"}, {"state": "offline"}, NOW, 30)
