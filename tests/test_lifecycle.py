"""Process-level behaviour: shutdown with open streams, and resources after clients leave."""

from __future__ import annotations

import signal

import requests

from tests.sse import open_stream
from tests.util import ingest, jobs, wait_until


def stats(server) -> dict:
    response = requests.get(server.url + "/api/debug/stats", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def worker_redis_connections(redis_client, pid: int) -> int:
    return sum(1 for c in redis_client.client_list() if c.get("name") == f"sluice-{pid}")


def test_debug_stats_is_off_by_default(server):
    assert requests.get(server.url + "/api/debug/stats").status_code == 404


def test_sigterm_with_open_streams_exits_fast_and_resume_loses_nothing(
    start_server, account, redis_client
):
    srv = start_server(SLUICE_GRACEFUL_TIMEOUT="30")
    cid = account.connection_id
    streams = [open_stream(srv.url, cid, api_key=account.api_key) for _ in range(20)]
    for stream in streams:
        stream.read_bytes(1)
    ingest(srv.url, account.api_key, cid, jobs(cid, 3))
    last_ids = [stream.data_events(3)[-1].id for stream in streams]

    took = srv.stop(signal.SIGTERM, timeout=30)
    # Without the drain this would take the whole 30 s graceful timeout.
    assert took < 5, f"shutdown took {took:.1f}s"
    for stream in streams:
        # Each stream was ended by the server, not left hanging.
        try:
            while True:
                stream.next_event(timeout=3)
        except ConnectionError:
            pass
        stream.close()

    # Events produced while the server is down (by another path: straight into Redis
    # through a second server would do too; here we restart first, then ingest).
    srv.start()
    ingest(srv.url, account.api_key, cid, jobs(cid, 4))
    all_ids = [entry_id for entry_id, _ in redis_client.xrange(f"sluice:{{{cid}}}:events")]
    for last in set(last_ids):
        with open_stream(srv.url, cid, api_key=account.api_key, last_event_id=last) as stream:
            resumed = stream.data_events(4)
            assert stream.data_events_within(0.5) == []
        assert [e.id for e in resumed] == all_ids[all_ids.index(last) + 1 :]


def test_resources_return_to_baseline_after_200_clients_leave(start_server, account, redis_client):
    srv = start_server(SLUICE_DEBUG_STATS="1", SLUICE_HEARTBEAT_SECONDS="0.5")
    cid = account.connection_id
    # Warm up: one stream so the shared reader and its Redis connection exist.
    with open_stream(srv.url, cid, api_key=account.api_key) as warm:
        warm.read_bytes(1)
        ingest(srv.url, account.api_key, cid, jobs(cid, 1))
        warm.data_events(1)
    wait_until(lambda: stats(srv)["hub"]["listeners"] == 0)
    baseline = stats(srv)
    worker_pid = baseline["pid"]
    redis_before = worker_redis_connections(redis_client, worker_pid)

    streams = [open_stream(srv.url, cid, api_key=account.api_key) for _ in range(200)]
    for stream in streams:
        stream.read_bytes(1)
    ingest(srv.url, account.api_key, cid, jobs(cid, 2))
    for stream in streams:
        assert len(stream.data_events(2)) == 2
    during = stats(srv)
    assert during["hub"]["listeners"] == 200
    assert during["hub"]["streams"] == 1
    # One shared reader: Redis connections do not grow with viewers.
    assert worker_redis_connections(redis_client, worker_pid) <= redis_before + 2

    for stream in streams:
        stream.close()
    # Gone at once or at the latest at the next heartbeat (0.5 s).
    after = wait_until(lambda: (s := stats(srv))["hub"]["listeners"] == 0 and s, timeout=10)
    assert after["hub"]["streams"] == 0
    wait_until(lambda: stats(srv)["greenlets"] <= baseline["greenlets"] + 2, timeout=10)
    assert worker_redis_connections(redis_client, worker_pid) <= redis_before + 2
