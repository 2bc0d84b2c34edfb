"""Job metrics, the pure parts: runtime and wait from an event's data, the label
caps (with Redis's answers made up), the gauges from snapshots, and the
collector's output. No Redis: across workers and Prometheus, see
tests/test_job_metrics.py."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.jobmetrics import (
    NAME,
    OTHER,
    QUEUE,
    Admission,
    ConnectionGauges,
    LabelCaps,
    QueueGauge,
    queue_gauges,
    runtime_seconds,
    wait_seconds,
    worker_online,
    workers_online,
)
from sluice.metrics import JobGauges

T = "2026-11-30T10:00:00.000Z"
T_PLUS_2_5 = "2026-11-30T10:00:02.500Z"
T_PLUS_HOUR = "2026-11-30T11:00:00.001Z"


# -- runtime and wait ----------------------------------------------------------------


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_runtime_of_a_finishing_event_with_both_ends(state):
    data = {"state": state, "startedAt": T, "finishedAt": T_PLUS_2_5}
    assert runtime_seconds(data) == 2.5
    assert runtime_seconds({**data, "finishedAt": T_PLUS_HOUR}) == 3600.001


@pytest.mark.parametrize("state", ["queued", "scheduled", "active", "retrying", "unknown"])
def test_no_runtime_for_other_states(state):
    assert runtime_seconds({"state": state, "startedAt": T, "finishedAt": T_PLUS_2_5}) is None


def test_runtime_falls_back_to_extensions_runtime_then_to_nothing():
    done = {"state": "completed"}
    assert runtime_seconds({**done, "extensions": {"runtime": 0.25}}) == 0.25
    assert runtime_seconds({**done, "extensions": {"runtime": 3}}) == 3.0
    # Both ends win over the extension.
    both = {**done, "startedAt": T, "finishedAt": T_PLUS_2_5, "extensions": {"runtime": 9}}
    assert runtime_seconds(both) == 2.5
    for runtime in (-1, True, "2", None, float("nan"), float("inf")):
        assert runtime_seconds({**done, "extensions": {"runtime": runtime}}) is None
    assert runtime_seconds({**done, "finishedAt": T_PLUS_2_5}) is None  # one end only
    assert runtime_seconds({**done, "startedAt": T}) is None
    assert runtime_seconds({**done, "extensions": "x"}) is None
    # The end before the start: not observed (clocks of two machines).
    assert runtime_seconds({**done, "startedAt": T_PLUS_2_5, "finishedAt": T}) is None


def test_wait_of_a_first_attempts_active_event():
    active = {"state": "active", "createdAt": T, "startedAt": T_PLUS_2_5}
    assert wait_seconds(active) == 2.5
    assert wait_seconds({**active, "attempt": 1, "previousState": "queued"}) == 2.5
    assert wait_seconds({**active, "attempt": 2}) is None  # createdAt is the first attempt's
    assert wait_seconds({**active, "previousState": "scheduled"}) is None  # a delay, not a wait
    assert wait_seconds({**active, "state": "completed"}) is None
    assert wait_seconds({"state": "active", "startedAt": T_PLUS_2_5}) is None
    assert wait_seconds({"state": "active", "createdAt": T_PLUS_2_5, "startedAt": T}) is None
    assert wait_seconds({**active, "createdAt": "yesterday"}) is None


# -- label caps ----------------------------------------------------------------------


class FakeRedis:
    """The admission script's rule, in memory: shared by several LabelCaps (processes)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sets: dict[tuple[str, str], list[str]] = {}
        self.calls = 0

    def admit(self, connection: str, kind: str, values: list[str]) -> Admission:
        self.calls += 1
        members = self.sets.setdefault((connection, kind), [])
        admitted = []
        for value in values:
            if value in members:
                admitted.append(value)
            elif len(members) < self.cap:
                members.append(value)
                admitted.append(value)
        return Admission(admitted, list(members) if len(members) >= self.cap else None)


def ask(caps: LabelCaps, redis: FakeRedis, connection: str, kind: str, values: list[str]) -> None:
    undecided = caps.undecided(connection, kind, values)
    if undecided:
        caps.learn(connection, kind, redis.admit(connection, kind, undecided))


def test_the_first_n_values_are_admitted_for_good_the_rest_are_other():
    redis = FakeRedis(cap=3)
    caps = LabelCaps(max_labels=3, max_connections=10)
    c = caps.connection("c1")
    assert c == "c1"
    ask(caps, redis, c, NAME, ["a", "b"])
    ask(caps, redis, c, NAME, ["b", "c", "d", "e"])
    assert [caps.label(c, NAME, v) for v in "abcde"] == ["a", "b", "c", OTHER, OTHER]
    calls = redis.calls
    # Decided values, and new ones once the set is known full, cost nothing.
    ask(caps, redis, c, NAME, ["a", "c", "zz", "yy"])
    assert redis.calls == calls
    assert caps.label(c, NAME, "zz") == OTHER
    # Kinds are apart; the empty queue is always its own label.
    ask(caps, redis, c, QUEUE, ["q1"])
    assert caps.label(c, QUEUE, "q1") == "q1"
    assert caps.label(c, QUEUE, "") == ""
    assert caps.undecided(c, QUEUE, ["", "q1"]) == []


def test_processes_share_the_admissions():
    redis = FakeRedis(cap=2)
    one, two = LabelCaps(2, 10), LabelCaps(2, 10)
    one.connection("c")
    two.connection("c")
    ask(one, redis, "c", NAME, ["x"])
    ask(two, redis, "c", NAME, ["y", "z"])  # y admitted, z not: the set is full
    ask(one, redis, "c", NAME, ["z", "y"])  # one learns the whole set
    for caps in (one, two):
        assert [caps.label("c", NAME, v) for v in "xyz"] == ["x", "y", OTHER]


def test_a_value_not_decided_yet_is_other():
    caps = LabelCaps(5, 10)
    caps.connection("c")
    assert caps.label("c", NAME, "never-asked") == OTHER  # e.g. Redis failed when asked


def test_connections_past_the_cap_are_other_with_everything_in_them():
    caps = LabelCaps(max_labels=5, max_connections=2)
    assert caps.connection("c1") == "c1"
    assert caps.connection("c2") == "c2"
    assert caps.connection("c3") == OTHER
    assert caps.connection("c1") == "c1"  # known ones stay
    assert caps.undecided("c3", NAME, ["a"]) == []
    assert caps.label(OTHER, NAME, "a") == OTHER
    assert caps.label(OTHER, QUEUE, "") == OTHER


# -- gauges --------------------------------------------------------------------------


NOW = 1_772_188_200_000  # 2026-02-27T10:30:00.000Z
FRESH = "2026-02-27T10:29:50.000Z"  # 10 s before NOW
OLD = "2026-02-27T10:28:00.000Z"  # 120 s before NOW


def test_online_is_anything_but_offline_or_expired():
    assert worker_online({"state": "online", "timestamp": FRESH}, NOW, 30)
    assert worker_online({"state": "busy", "timestamp": FRESH}, NOW, 30)
    assert worker_online({"state": "idle", "timestamp": FRESH}, NOW, 30)
    assert not worker_online({"state": "offline", "timestamp": FRESH}, NOW, 30)
    assert not worker_online({"state": "busy", "timestamp": OLD}, NOW, 30)
    snapshots = [
        {"state": "busy", "timestamp": FRESH},
        {"state": "offline", "timestamp": FRESH},
        {"state": "idle", "timestamp": FRESH},
        {"state": "busy", "timestamp": OLD},  # heartbeats stopped: not online
    ]
    assert workers_online(snapshots, NOW, 30) == 2
    assert workers_online(snapshots, NOW, 200) == 3  # a longer expiry: still in time
    assert workers_online([{"state": "offline", "timestamp": FRESH}], NOW, 30) == 0
    assert workers_online([], NOW, 30) is None  # no workers known: no series


def test_queue_gauges_admitted_queues_apart_the_rest_summed_as_other():
    snapshots = [
        {"name": "a", "depth": 3, "consumers": 2},
        {"name": "b", "depth": 4, "consumers": None, "extensions": {"oldestAgeSeconds": 12.5}},
        {"name": "c", "depth": 5, "consumers": 1, "extensions": {"oldestAgeSeconds": 30}},
        {"name": "d", "depth": 1, "extensions": {"oldestAgeSeconds": -1}},
        {"name": "broken"},
    ]
    assert queue_gauges(snapshots, {"a", "b"}) == [
        QueueGauge("a", 3, 2, None),
        QueueGauge("b", 4, None, 12.5),
        QueueGauge(OTHER, 6, 1, 30.0),
    ]


def test_the_collector_exports_what_it_read_and_nothing_on_failure():
    gauges = [
        ConnectionGauges("c1", 2, [QueueGauge("q", 7, 3, 1.5), QueueGauge(OTHER, 1, None, None)]),
        ConnectionGauges("c2", None, []),
    ]
    registry = CollectorRegistry()
    registry.register(JobGauges(lambda: gauges))
    text = generate_latest(registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got == {
        ("sluice_workers_online", (("connection", "c1"),)): 2.0,
        ("sluice_queue_depth", (("connection", "c1"), ("queue", "q"))): 7.0,
        ("sluice_queue_depth", (("connection", "c1"), ("queue", OTHER))): 1.0,
        ("sluice_queue_consumers", (("connection", "c1"), ("queue", "q"))): 3.0,
        ("sluice_queue_oldest_age_seconds", (("connection", "c1"), ("queue", "q"))): 1.5,
    }
    failed = CollectorRegistry()
    failed.register(JobGauges(lambda: None))
    assert generate_latest(failed) == b""
