"""The shared reader and fan-out (one per worker process), seen from outside.

Timings stay in bench/; these tests check behaviour: who gets what, in which
order, exactly once, through real gunicorn+gevent and real Redis.
"""

from __future__ import annotations

import threading

import pytest

from tests.conftest import make_account
from tests.sse import open_stream
from tests.util import ingest, job_event, jobs


def entry_ids(redis_client, connection_id: str) -> list[str]:
    return [i for i, _ in redis_client.xrange(f"sluice:{{{connection_id}}}:events")]


def test_new_connection_joins_while_the_read_is_blocked(start_server, account, other_account):
    """The reader waits (up to the 60 s sweep) for A's notifications; B's first
    listener subscribes to B's, so B's events arrive long before the sweep."""
    server = start_server(SLUICE_READ_BLOCK_MS="60000", SLUICE_HEARTBEAT_SECONDS="1")
    with open_stream(server.url, account.connection_id, api_key=account.api_key) as a_stream:
        a_stream.read_bytes(1)
        with open_stream(
            server.url, other_account.connection_id, api_key=other_account.api_key
        ) as b_stream:
            b_stream.read_bytes(1)
            ingest(
                server.url,
                other_account.api_key,
                other_account.connection_id,
                jobs(other_account.connection_id, 1),
            )
            assert len(b_stream.data_events(1, timeout=15)) == 1
        # B left while the read was blocked; A is unaffected.
        ingest(server.url, account.api_key, account.connection_id, jobs(account.connection_id, 1))
        assert len(a_stream.data_events(1, timeout=15)) == 1


@pytest.mark.single_node(
    reason="at most 6 connections of the process, a bound for one node; a cluster client "
    "keeps a pool per master and a pub/sub connection per shard"
)
def test_many_connections_one_reader(start_server, redis_url, redis_client):
    srv = start_server(SLUICE_DEBUG_STATS="1")
    accounts = [make_account(redis_url) for _ in range(15)]
    streams = {
        a.connection_id: [
            open_stream(srv.url, a.connection_id, api_key=a.api_key) for _ in range(3)
        ]
        for a in accounts
    }
    for group in streams.values():
        for stream in group:
            stream.read_bytes(1)
    for a in accounts:
        ingest(
            srv.url,
            a.api_key,
            a.connection_id,
            [job_event(a.connection_id, f"job-of-{a.connection_id}", "queued")],
        )
    for a in accounts:
        for stream in streams[a.connection_id]:
            (event,) = stream.data_events(1)
            assert event.json()["externalId"] == f"job-of-{a.connection_id}"
    import requests

    stats = requests.get(srv.url + "/api/debug/stats").json()
    assert stats["hub"]["streams"] == 15 and stats["hub"]["listeners"] == 45
    named = sum(1 for c in redis_client.client_list() if c.get("name") == f"sluice-{stats['pid']}")
    # Pool connections and one pub/sub connection: not one per viewer or per tenant.
    assert named <= 6
    for group in streams.values():
        for stream in group:
            stream.close()


def test_slow_listener_is_cut_off_and_resumes_without_loss(start_server, account, redis_client):
    """A client that stops reading is cut off once its buffer is full; readers that keep
    up get everything; the stalled one resumes from its last complete id, losing nothing."""
    srv = start_server(SLUICE_LISTENER_BUFFER_BYTES="65536")
    cid = account.connection_id
    fast = open_stream(srv.url, cid, api_key=account.api_key)
    slow = open_stream(srv.url, cid, api_key=account.api_key, rcvbuf=65536)
    fast.read_bytes(1)
    slow.read_bytes(1)
    # ~12 MB of events: far more than the stalled client's socket buffers hold.
    total = 0
    for _ in range(15):
        batch = [
            job_event(
                cid, f"j{total + i}", "failed", stacktrace="x" * 8000, event_id=f"e{total + i}"
            )
            for i in range(100)
        ]
        assert ingest(srv.url, account.api_key, cid, batch).status_code == 202
        total += 100
        got_fast = fast.data_events(100, timeout=10)
        assert len(got_fast) == 100
    fast.close()
    ids = entry_ids(redis_client, cid)
    assert len(ids) == total

    # The stalled client now reads what reached it before the cut: a prefix, then EOF.
    received = []
    with pytest.raises(ConnectionError):
        while True:
            event = slow.next_event(timeout=10)
            if event.id is not None:
                received.append(event.id)
    slow.close()
    assert received == ids[: len(received)]
    assert len(received) < total, "the stalled client was never cut off"

    resume_from = received[-1] if received else "0"
    with open_stream(srv.url, cid, api_key=account.api_key, last_event_id=resume_from) as again:
        rest = again.data_events(total - len(received), timeout=20)
    assert [e.id for e in rest] == ids[len(received) :]


def test_catch_up_joins_the_live_feed_without_gap_or_duplicate(server, account, redis_client):
    """A resuming client reads history while events keep arriving; history and live
    feed meet exactly once, in order."""
    cid = account.connection_id
    keeper = open_stream(server.url, cid, api_key=account.api_key)  # keeps the hub's cursor moving
    keeper.read_bytes(1)
    ingest(server.url, account.api_key, cid, jobs(cid, 50))
    start_id = keeper.data_events(50)[9].id  # resume from the 10th event

    stop = threading.Event()
    produced = [50]

    def produce():
        while not stop.is_set() and produced[0] < 1000:
            ingest(server.url, account.api_key, cid, jobs(cid, 10))
            produced[0] += 10

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        with open_stream(
            server.url, cid, api_key=account.api_key, last_event_id=start_id
        ) as resumed:
            got = resumed.data_events(200, timeout=20)
    finally:
        stop.set()
        producer.join()
        keeper.close()
    ids = entry_ids(redis_client, cid)
    first = ids.index(start_id) + 1
    assert [e.id for e in got] == ids[first : first + 200]


def test_a_dropped_subscription_is_taken_up_again_and_loses_nothing(
    start_server, account, redis_client
):
    """Redis drops the hub's pub/sub connection (CLIENT KILL TYPE pubsub: what a
    restart or a failover does to it): events appended meanwhile and after arrive,
    in order, long before the 60 s sweep would read them."""
    import requests

    srv = start_server(SLUICE_READ_BLOCK_MS="60000", SLUICE_DEBUG_STATS="1")
    cid = account.connection_id
    with open_stream(srv.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        first = jobs(cid, 2)
        assert ingest(srv.url, account.api_key, cid, first).status_code == 202
        assert len(stream.data_events(2, timeout=5)) == 2
        pid = requests.get(srv.url + "/api/debug/stats").json()["pid"]
        subscribers = [
            c["id"]
            for c in redis_client.client_list()
            if c.get("name") == f"sluice-{pid}" and int(c.get("ssub", 0)) > 0
        ]
        assert len(subscribers) == 1  # one pub/sub connection per process
        assert redis_client.client_kill_filter(_id=subscribers[0]) == 1
        later = jobs(cid, 3)
        assert ingest(srv.url, account.api_key, cid, later).status_code == 202
        got = stream.data_events(3, timeout=10)
        assert [e.json()["externalId"] for e in got] == [e["job"]["externalId"] for e in later]
        ids = [e.id for e in got]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


@pytest.mark.single_node(
    reason="counts one SSUBSCRIBE connection per process; sharded pub/sub on a cluster "
    "takes one per shard, and 20 streams span every shard"
)
def test_streams_opened_at_once_on_a_fresh_worker_are_all_notified(
    start_server, redis_url, redis_client
):
    """Many first subscriptions at the same moment (a deploy's reconnect burst):
    every stream is notified on the process's one pub/sub connection, with the
    sweep a minute away."""
    import requests

    srv = start_server(SLUICE_READ_BLOCK_MS="60000", SLUICE_DEBUG_STATS="1")
    accounts = [make_account(redis_url) for _ in range(20)]
    results: dict[str, list] = {}
    streaming = threading.Semaphore(0)

    def follow(a) -> None:
        with open_stream(srv.url, a.connection_id, api_key=a.api_key) as stream:
            stream.read_bytes(1)
            streaming.release()
            results[a.connection_id] = stream.data_events(1, timeout=10)

    threads = [threading.Thread(target=follow, args=(a,)) for a in accounts]
    for t in threads:
        t.start()
    for _ in accounts:
        assert streaming.acquire(timeout=15)
    for a in accounts:
        assert ingest(srv.url, a.api_key, a.connection_id, jobs(a.connection_id, 1)).ok
    for t in threads:
        t.join(15)
    assert sorted(results) == sorted(a.connection_id for a in accounts)
    pid = requests.get(srv.url + "/api/debug/stats").json()["pid"]
    subscribers = [
        c
        for c in redis_client.client_list()
        if c.get("name") == f"sluice-{pid}" and int(c.get("ssub", 0)) > 0
    ]
    assert len(subscribers) <= 1  # never a second, orphaned pub/sub connection
