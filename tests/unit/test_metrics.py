"""The service metrics, pure and in one process: what the hub, the listener and the
web hooks count (single-process mode: deltas of the default registry), who may
read `GET /metrics` (Flask's test client, no Redis running), the gunicorn
master's metrics directory, and the live workers' process metrics.

Across gunicorn workers, a worker's death and a real Prometheus:
tests/test_metrics.py."""

from __future__ import annotations

import os

import gevent
import pytest
from gevent import socket as gsocket
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sluice import metrics
from sluice.config import load_settings
from sluice.fanout.hub import Hub
from sluice.fanout.listener import Listener
from sluice.fanout.sse import event_frame, http_chunk
from sluice.gunicorn_conf import prepare_metrics_dir
from sluice.web.app import create_app
from sluice.web.metrics import allowed
from tests.unit.test_hub import Clock, MemoryLog, attach
from tests.unit.wire import JOB, QUEUE, frame, recv_exactly

UNREACHABLE = {"redis_url": "redis://127.0.0.1:1/0", "secret_key": "x" * 32}
TOKEN = "t0ken-of-the-metrics"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Sample values now, compared later: `deltas.of(name, **labels)`."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.before = {(name, tuple(sorted(labels.items()))): 0.0 for name, labels in samples}
        for key in self.before:
            self.before[key] = value(key[0], **dict(key[1]))

    def of(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return value(name, **labels) - self.before[key]


def until(predicate, timeout: float = 2.0) -> None:
    """Let the hub's greenlets run until `predicate()` holds."""
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.001)


def deltas(*names: str, **labelled: tuple[str, dict[str, str]]) -> Deltas:
    """Unlabelled samples by name; labelled ones as `anything=(name, labels)`."""
    return Deltas(*((n, {}) for n in names), *labelled.values())


# -- the hub and the listener --------------------------------------------------------


@pytest.fixture
def setup():
    """(hub at wall time 1.25 s, its in-memory log, socket pairs maker)."""
    log = MemoryLog()  # entry ids 1000-0, 1001-0, ...: appended at 1.000 s, 1.001 s, ...
    settings = load_settings(environ={}, overrides={"read_block_ms": 5_000})
    hub = Hub(settings, log, clock=Clock(), wall_clock=lambda: 1.25)
    opened: list[gsocket.socket] = []

    def pair():
        a, b = gsocket.socketpair()
        opened.extend((a, b))
        return a, b

    yield hub, log, pair
    gevent.killall([g for g in (hub._reader, hub._listener, hub._ticker) if g is not None])
    for s in opened:
        s.close()


def live(hub, pair, types=None, last_event_id=None):
    server, client = pair()
    sub = hub.subscribe("c1", last_event_id, types, server)
    attach(sub, server)
    return sub, client


def test_streams_open_follows_the_hubs_listeners(setup):
    hub, log, pair = setup
    d = deltas("sluice_streams_open")
    subs = [live(hub, pair)[0] for _ in range(3)]
    assert d.of("sluice_streams_open") == 3 == hub.stats()["listeners"]
    hub.unsubscribe(subs[0].listener)
    hub.unsubscribe(subs[0].listener)  # twice: counted once
    assert d.of("sluice_streams_open") == 2
    for sub in subs[1:]:
        hub.unsubscribe(sub.listener)
    assert d.of("sluice_streams_open") == 0


def test_one_read_round_counts_its_events_per_client_and_its_lag_once(setup):
    hub, log, pair = setup
    _, everything = live(hub, pair)
    _, queues = live(hub, pair, types=frozenset({QUEUE}))
    d = deltas(
        "sluice_events_delivered_total",
        "sluice_fanout_lag_seconds_count",
        "sluice_fanout_lag_seconds_sum",
        "sluice_hub_reads_total",
        lag_025=("sluice_fanout_lag_seconds_bucket", {"le": "0.25"}),
        lag_01=("sluice_fanout_lag_seconds_bucket", {"le": "0.1"}),
    )
    reads = hub.reads
    key = log.stream_key("c1")
    # Appended without yielding: the reader takes all three in one round.
    ids = [log.append(key, event, b"{}") for event in (JOB, QUEUE, JOB)]
    want = http_chunk(event_frame(ids[1], QUEUE, b"{}"))
    assert recv_exactly(queues, len(want)) == want
    assert d.of("sluice_events_delivered_total") == 3 + 1
    assert d.of("sluice_hub_reads_total") == hub.reads - reads >= 1
    # One observation: the oldest entry (1.000 s) written at 1.25 s.
    assert d.of("sluice_fanout_lag_seconds_count") == 1
    assert d.of("sluice_fanout_lag_seconds_sum") == pytest.approx(0.25)
    assert d.of("sluice_fanout_lag_seconds_bucket", le="0.25") == 1
    assert d.of("sluice_fanout_lag_seconds_bucket", le="0.1") == 0
    assert everything.recv(1)


def test_a_stream_first_read_from_far_back_is_not_fanout_lag(setup):
    hub, log, pair = setup
    key = log.stream_key("c1")
    for _ in range(3):
        log.append(key, JOB, b"{}")
    d = deltas("sluice_events_delivered_total", "sluice_fanout_lag_seconds_count")
    _, client = live(hub, pair, last_event_id="0-0")  # not watched yet: the reader reads it
    assert client.recv(1)  # the reader wrote them: its round is over
    assert d.of("sluice_events_delivered_total") == 3
    assert d.of("sluice_fanout_lag_seconds_count") == 0
    log.append(key, JOB, b"{}")  # live now
    until(lambda: d.of("sluice_events_delivered_total") == 4)
    assert d.of("sluice_fanout_lag_seconds_count") == 1


def test_a_stream_redis_refuses_counts_an_error_and_closes_its_listeners(setup):
    hub, log, pair = setup
    d = deltas("sluice_redis_errors_total", "sluice_streams_open")
    live(hub, pair)
    live(hub, pair)
    key = log.stream_key("c1")
    log.refusing.add(key)
    log.append(key, JOB, b"{}")
    until(lambda: hub.stats()["listeners"] == 0)
    assert d.of("sluice_redis_errors_total") == 1
    assert d.of("sluice_streams_open") == 0


def test_a_cut_off_is_counted_and_takes_nothing():
    d = deltas("sluice_stream_cutoffs_total")
    lst = Listener(b"k", None, 10)
    lst.writing = True
    assert lst.deliver([frame(1), frame(2)]) == 0
    assert lst.close_reason == "overflow"
    assert d.of("sluice_stream_cutoffs_total") == 1
    assert lst.deliver([frame(3)]) == 0  # closed


def test_deliver_says_how_many_frames_it_took():
    lst = Listener(b"k", frozenset({QUEUE}), 1 << 20)
    assert lst.deliver([frame(1), frame(2, QUEUE), frame(3, QUEUE)]) == 2
    assert lst.deliver([frame(4)]) == 0


# -- GET /metrics --------------------------------------------------------------------


@pytest.mark.parametrize(
    "token, production, header, ok",
    [
        (None, False, None, True),  # development: open
        (None, False, "Bearer anything", True),
        (None, True, None, False),  # production without a token: nobody
        (None, True, f"Bearer {TOKEN}", False),
        (TOKEN, False, None, False),  # a token: only that bearer, everywhere
        (TOKEN, False, f"Bearer {TOKEN}", True),
        (TOKEN, True, f"Bearer {TOKEN}", True),
        (TOKEN, True, f"bearer {TOKEN}", True),
        (TOKEN, True, f"Bearer  {TOKEN} ", True),
        (TOKEN, True, f"Bearer {TOKEN}x", False),
        (TOKEN, True, f"Bearer {TOKEN[:-1]}", False),
        (TOKEN, True, TOKEN, False),
        (TOKEN, True, f"Basic {TOKEN}", False),
        (TOKEN, True, "Bearer ", False),
        (TOKEN, True, "Bearer ünïcode", False),
    ],
)
def test_who_may_read_the_metrics(token, production, header, ok):
    assert allowed(token, production, header) is ok


@pytest.fixture(scope="module")
def development():
    return create_app(overrides=UNREACHABLE).test_client()


@pytest.fixture(scope="module")
def production():
    app = create_app(overrides={**UNREACHABLE, "env": "production"})
    return app.test_client()


@pytest.fixture(scope="module")
def production_with_token():
    app = create_app(overrides={**UNREACHABLE, "env": "production", "metrics_token": TOKEN})
    return app.test_client()


#: Every metric the service exports, with its type (the issue's names).
EXPORTED = {
    "sluice_streams_open": "gauge",
    "sluice_processes": "gauge",
    "sluice_stream_opens": "counter",
    "sluice_events_delivered": "counter",
    "sluice_stream_cutoffs": "counter",
    "sluice_fanout_lag_seconds": "histogram",
    "sluice_ingest_requests": "counter",
    "sluice_ingest_events": "counter",
    "sluice_ingest_seconds": "histogram",
    "sluice_redis_errors": "counter",
    "sluice_hub_reads": "counter",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
}


def test_development_serves_every_metric_without_redis(development):
    errors = deltas("sluice_redis_errors_total")
    response = development.get("/metrics")  # Redis is down: only the job gauges need it
    assert response.status_code == 200
    # The queue and worker gauges could not be read: none, and the failure counted.
    assert errors.of("sluice_redis_errors_total") == 1
    assert b"sluice_workers_online" not in response.data
    assert b"sluice_queue_depth" not in response.data
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {name: families[name].type for name in EXPORTED if name in families} == EXPORTED
    results = {s.labels["result"] for s in families["sluice_ingest_events"].samples}
    assert results == {"accepted", "duplicate", "rejected"}


def test_production_without_a_token_is_a_plain_404(production):
    unknown = production.get("/no-such-page")
    for headers in ({}, {"Authorization": "Bearer x"}):
        response = production.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert response.get_data() == unknown.get_data()


def test_a_token_lets_only_its_bearer_in(production_with_token):
    client = production_with_token
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 404
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and b"sluice_ingest_events_total" in ok.get_data()


def test_stream_opens_and_ingests_are_counted_by_the_status_they_got(development):
    d = deltas(
        "sluice_ingest_seconds_count",
        "sluice_redis_errors_total",
        unauthorized=("sluice_stream_opens_total", {"result": "unauthorized"}),
        unavailable=("sluice_stream_opens_total", {"result": "unavailable"}),
        ingest_503=("sluice_ingest_requests_total", {"status": "503"}),
        ingest_401=("sluice_ingest_requests_total", {"status": "401"}),
    )
    assert development.get("/api/events/stream?connectionId=x").status_code == 401
    key = {"Authorization": "Bearer sk_live_" + "a" * 43}
    assert development.get("/api/events/stream?connectionId=x", headers=key).status_code == 503
    # Refused by the rate limiter (its counters are in the unreachable Redis): timed too.
    assert development.post("/api/ingest", json={}, headers=key).status_code == 503
    assert d.of("sluice_stream_opens_total", result="unauthorized") == 1
    assert d.of("sluice_stream_opens_total", result="unavailable") == 1
    assert d.of("sluice_ingest_requests_total", status="503") == 1
    assert d.of("sluice_ingest_requests_total", status="401") == 0
    assert d.of("sluice_ingest_seconds_count") == 1
    assert d.of("sluice_redis_errors_total") == 2
    before = value("sluice_ingest_requests_total", status="200")
    development.get("/metrics")
    assert value("sluice_ingest_requests_total", status="200") == before  # scrapes are not ingests


# -- the multiprocess directory and the workers' process metrics -----------------------


def test_the_operators_directory_loses_its_old_values_only(tmp_path):
    (tmp_path / "counter_12.db").write_bytes(b"old")
    (tmp_path / "gauge_livesum_12.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("kept")
    environ = {"SLUICE_METRICS_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": "/elsewhere"}
    assert prepare_metrics_dir(environ) == (str(tmp_path), False)
    assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_prometheus_multiproc_dir_is_used_and_made_when_missing(tmp_path):
    wanted = tmp_path / "a" / "b"
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(wanted)}
    assert prepare_metrics_dir(environ) == (str(wanted), False)
    assert wanted.is_dir()


def test_without_either_a_temporary_directory_is_made():
    environ: dict[str, str] = {}
    path, made = prepare_metrics_dir(environ)
    try:
        assert made and os.path.isdir(path) and environ["PROMETHEUS_MULTIPROC_DIR"] == path
        assert os.listdir(path) == []
    finally:
        os.rmdir(path)


def test_the_live_workers_process_metrics_are_labelled_by_pid(tmp_path):
    me = os.getpid()
    for name in (f"gauge_livesum_{me}.db", "counter_999999.db", "gauge_livesum_x.db"):
        (tmp_path / name).write_bytes(b"")
    assert metrics.live_pids(str(tmp_path)) == [me]
    families = {f.name: f for f in metrics.WorkerProcesses(str(tmp_path)).collect()}
    if not families:
        pytest.skip("no /proc here")
    rss = families["process_resident_memory_bytes"]
    assert [(s.labels, s.value > 0) for s in rss.samples] == [({"pid": str(me)}, True)]
    cpu = families["process_cpu_seconds"]
    assert cpu.type == "counter" and cpu.samples[0].name == "process_cpu_seconds_total"
