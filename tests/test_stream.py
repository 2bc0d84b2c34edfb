"""`GET /api/events/stream` against a real gunicorn+gevent server and a real Redis."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from tests.sse import open_stream, read_error_body
from tests.util import ingest, job_event, jobs, queue_event, worker_event

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def stream_key(connection_id: str) -> str:
    return f"sluice:{{{connection_id}}}:events"


def ingest_ok(server, account, events):
    response = ingest(server.url, account.api_key, account.connection_id, events)
    assert response.status_code == 202, response.text
    return response


# -- before the stream starts: JSON errors ------------------------------------


def expect_error(stream, status, code, field=None):
    assert stream.status == status
    assert stream.headers["content-type"].startswith("application/json")
    body = read_error_body(stream)
    assert body["error"]["code"] == code
    if field:
        assert field in body["error"]["details"]
    stream.close()


def test_missing_or_malformed_connection_id_is_400(server, account):
    expect_error(
        open_stream(server.url, None, api_key=account.api_key),
        400,
        "VALIDATION_ERROR",
        "connectionId",
    )
    expect_error(
        open_stream(server.url, "not-a-uuid", api_key=account.api_key),
        400,
        "VALIDATION_ERROR",
        "connectionId",
    )


def test_unknown_type_is_400(server, account):
    expect_error(
        open_stream(server.url, account.connection_id, api_key=account.api_key, types="job,bogus"),
        400,
        "VALIDATION_ERROR",
        "types",
    )


def test_malformed_last_event_id_is_400(server, account):
    expect_error(
        open_stream(
            server.url, account.connection_id, api_key=account.api_key, last_event_id="abc"
        ),
        400,
        "VALIDATION_ERROR",
        "Last-Event-ID",
    )
    expect_error(
        open_stream(
            server.url, account.connection_id, api_key=account.api_key, query_last_event_id="1-x"
        ),
        400,
        "VALIDATION_ERROR",
        "lastEventId",
    )


def test_no_auth_is_401(server, account):
    expect_error(open_stream(server.url, account.connection_id), 401, "UNAUTHORIZED")
    expect_error(
        open_stream(server.url, account.connection_id, api_key="sk_live_forged"),
        401,
        "UNAUTHORIZED",
    )


def test_unknown_connection_is_404(server, account):
    cookies = dict(account.login(server.url).cookies)
    expect_error(open_stream(server.url, str(uuid.uuid4()), cookies=cookies), 404, "NOT_FOUND")
    expect_error(
        open_stream(server.url, str(uuid.uuid4()), api_key=account.api_key), 404, "NOT_FOUND"
    )


def test_tenant_isolation(server, account, other_account):
    """B's session and B's key never open A's connection, and B's stream never carries A's events."""
    b_cookies = dict(other_account.login(server.url).cookies)
    expect_error(
        open_stream(server.url, account.connection_id, cookies=b_cookies), 404, "NOT_FOUND"
    )
    expect_error(
        open_stream(server.url, account.connection_id, api_key=other_account.api_key),
        404,
        "NOT_FOUND",
    )
    with open_stream(
        server.url, other_account.connection_id, api_key=other_account.api_key
    ) as b_stream:
        ingest_ok(server, account, [job_event(account.connection_id, "secret-job", "queued")])
        ingest(
            server.url,
            other_account.api_key,
            other_account.connection_id,
            [job_event(other_account.connection_id, "b-job", "queued")],
        )
        (event,) = b_stream.data_events(1)
        assert event.json()["externalId"] == "b-job"


# -- the stream -------------------------------------------------------------


def test_headers_and_first_bytes_at_once(start_server, account):
    slow_heartbeat = start_server(SLUICE_HEARTBEAT_SECONDS="30")
    started = time.monotonic()
    with open_stream(slow_heartbeat.url, account.connection_id, api_key=account.api_key) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.read_bytes(len(b"retry: 2000\n\n"), timeout=5) == b"retry: 2000\n\n"
        # Well before the first 30 s heartbeat: onopen fires at once.
        assert time.monotonic() - started < 5


def test_session_cookie_of_owner_streams(server, account):
    cookies = dict(account.login(server.url).cookies)
    with open_stream(server.url, account.connection_id, cookies=cookies) as stream:
        assert stream.status == 200
        stream.read_bytes(1)
        ingest_ok(server, account, [job_event(account.connection_id, "j1", "active")])
        (event,) = stream.data_events(1)
        assert event.json()["state"] == "active"


def test_frames_are_byte_exact(server, account, redis_client):
    """The frame is the Redis entry: `id:` is the entry id and `data:` the stored JSON."""
    cid = account.connection_id
    with open_stream(server.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(13)
        ingest_ok(
            server,
            account,
            [job_event(cid, "j1", "completed", previousState="active", queue="default")],
        )
        ((entry_id, fields),) = redis_client.xrange(stream_key(cid))
        expected = f"id: {entry_id}\nevent: job:state_change\ndata: {fields['d']}\n\n".encode()
        body = stream.read_bytes(13 + len(expected))
        assert body == b"retry: 2000\n\n" + expected
    data = json.loads(fields["d"])
    assert list(data)[:6] == ["id", "externalId", "name", "state", "previousState", "timestamp"]
    assert data["previousState"] == "active" and data["queue"] == "default"
    assert TIMESTAMP.match(data["timestamp"])


def test_every_event_type_with_its_fields(server, account):
    cid = account.connection_id
    with open_stream(server.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest_ok(
            server,
            account,
            [
                job_event(
                    cid,
                    "j1",
                    "failed",
                    previousState="active",
                    error="boom",
                    stacktrace="tb",
                    attempt=2,
                ),
                worker_event(cid, "celery@w1", "busy", activeJobs=3, hostname="w1"),
                worker_event(
                    cid, "celery@w1", "offline", kind="worker_state_change", previousState="busy"
                ),
                queue_event(cid, "default", 42, consumers=4),
            ],
        )
        events = stream.data_events(4)
    by_name = {e.event: e.json() for e in events}
    assert set(by_name["job:state_change"]) >= {
        "id",
        "externalId",
        "name",
        "state",
        "previousState",
        "timestamp",
        "error",
        "stacktrace",
        "attempt",
    }
    assert set(by_name["worker:heartbeat"]) >= {"id", "hostname", "state", "activeJobs"}
    assert by_name["worker:heartbeat"]["activeJobs"] == 3
    assert set(by_name["worker:state_change"]) >= {
        "id",
        "hostname",
        "state",
        "previousState",
        "timestamp",
    }
    assert by_name["worker:state_change"]["hostname"] == "celery@w1"
    assert by_name["queue:snapshot"] == {
        "name": "default",
        "depth": 42,
        "consumers": 4,
        "timestamp": by_name["queue:snapshot"]["timestamp"],
    }
    assert by_name["worker:heartbeat"]["id"] == by_name["worker:state_change"]["id"]


@pytest.mark.parametrize(
    "types, expected",
    [
        ("job", {"job:state_change"}),
        ("worker", {"worker:heartbeat", "worker:state_change"}),
        (" queue , job:state_change ", {"queue:snapshot", "job:state_change"}),
        ("worker:state_change", {"worker:state_change"}),
        ("", {"job:state_change", "worker:heartbeat", "worker:state_change", "queue:snapshot"}),
    ],
)
def test_types_filter(server, account, types, expected):
    cid = account.connection_id
    with open_stream(server.url, cid, api_key=account.api_key, types=types) as stream:
        stream.read_bytes(1)
        ingest_ok(
            server,
            account,
            [
                job_event(cid, "j", "queued"),
                worker_event(cid, "w", "idle"),
                worker_event(cid, "w", "online", kind="worker_state_change"),
                queue_event(cid, "q", 1),
                job_event(cid, "end", "queued", name="end-marker"),
            ],
        )
        # The marker is a job event; for filters that hide jobs, use the heartbeat after it.
        seen = stream.events_until(
            lambda e: (
                (e.event == "job:state_change" and e.json()["name"] == "end-marker")
                or (e.event == "heartbeat")
            ),
            timeout=5,
        )
        if "job:state_change" not in expected:
            seen += stream.events_until(lambda e: e.event == "heartbeat", timeout=5)
    names = {e.event for e in seen if e.id is not None}
    assert names == expected


def test_heartbeat_on_idle_stream(server, account):
    """SLUICE_HEARTBEAT_SECONDS=1 on the test server: heartbeats, without id, keep coming."""
    with open_stream(server.url, account.connection_id, api_key=account.api_key) as stream:
        beats = [stream.next_event(timeout=3) for _ in range(3)]
    assert [b.event for b in beats] == ["heartbeat"] * 3
    assert all(b.id is None for b in beats)
    assert all(TIMESTAMP.match(b.json()["timestamp"]) for b in beats)
    assert b"id:" not in stream.body_log


def test_heartbeat_when_filter_hides_busy_traffic(server, account):
    """Busy job traffic that the `queue` filter hides must not starve the heartbeat."""
    cid = account.connection_id
    import threading

    stop = threading.Event()

    def produce():
        while not stop.is_set():
            ingest(server.url, account.api_key, cid, [job_event(cid, "busy", "active")])
            stop.wait(0.05)

    producer = threading.Thread(target=produce)
    with open_stream(server.url, cid, api_key=account.api_key, types="queue") as stream:
        stream.read_bytes(1)
        producer.start()
        try:
            arrivals = [stream.next_event(timeout=3) for _ in range(3)]
        finally:
            stop.set()
            producer.join()
    assert [e.event for e in arrivals] == ["heartbeat"] * 3


def test_starts_after_the_request_without_last_event_id(server, account):
    cid = account.connection_id
    ingest_ok(server, account, [job_event(cid, "before", "queued")])
    with open_stream(server.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest_ok(server, account, [job_event(cid, "after", "queued")])
        (event,) = stream.data_events(1)
    assert event.json()["externalId"] == "after"


@pytest.mark.parametrize("how", ["header", "query", "header-wins"])
def test_resume_gets_exactly_the_missed_events(server, account, redis_client, how):
    cid = account.connection_id
    with open_stream(server.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest_ok(server, account, jobs(cid, 5))
        seen = stream.data_events(5)
    last = seen[-1].id
    ingest_ok(server, account, jobs(cid, 7))  # missed while away
    kwargs = {
        "header": {"last_event_id": last},
        "query": {"query_last_event_id": last},
        "header-wins": {"last_event_id": last, "query_last_event_id": "0"},
    }[how]
    with open_stream(server.url, cid, api_key=account.api_key, **kwargs) as stream:
        missed = stream.data_events(7)
        ingest_ok(server, account, jobs(cid, 2))  # then live
        live = stream.data_events(2)
        assert stream.data_events_within(1.0) == []
    all_ids = [entry_id for entry_id, _ in redis_client.xrange(stream_key(cid))]
    assert [e.id for e in seen] == all_ids[:5]
    assert [e.id for e in missed] == all_ids[5:12]
    assert [e.id for e in live] == all_ids[12:14]


def test_last_event_id_zero_replays_retained_history(server, account, redis_client):
    cid = account.connection_id
    ingest_ok(server, account, jobs(cid, 4))
    with open_stream(server.url, cid, api_key=account.api_key, query_last_event_id="0") as stream:
        events = stream.data_events(4)
    assert [e.id for e in events] == [i for i, _ in redis_client.xrange(stream_key(cid))]
    assert b"stream:reset" not in stream.body_log


def test_stream_reset_when_resume_point_was_trimmed(start_server, account, redis_client):
    short = start_server(SLUICE_STREAM_MAXLEN="20")
    cid = account.connection_id
    with open_stream(short.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest(short.url, account.api_key, cid, jobs(cid, 1))
        (first,) = stream.data_events(1)
    for _ in range(5):
        ingest(short.url, account.api_key, cid, jobs(cid, 100))
    retained = [i for i, _ in redis_client.xrange(stream_key(cid))]
    assert first.id not in retained
    with open_stream(short.url, cid, api_key=account.api_key, last_event_id=first.id) as stream:
        reset = stream.next_event()
        assert reset.event == "stream:reset" and reset.id is None
        assert reset.json()["reason"] == "history_trimmed"
        replay = stream.data_events(len(retained))
    assert [e.id for e in replay] == retained


def test_unknown_future_id_resets_to_live(server, account):
    cid = account.connection_id
    with open_stream(
        server.url, cid, api_key=account.api_key, last_event_id="99999999999999-0"
    ) as stream:
        reset = stream.next_event()
        assert reset.event == "stream:reset"
        ingest_ok(server, account, jobs(cid, 1))
        assert len(stream.data_events(1)) == 1


def test_deleting_a_connection_ends_its_streams(server, account):
    session = account.login(server.url)
    with open_stream(server.url, account.connection_id, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        assert (
            session.delete(server.url + f"/api/connections/{account.connection_id}").status_code
            == 204
        )
        with pytest.raises(ConnectionError):
            while True:
                stream.next_event(timeout=5)
    expect_error(
        open_stream(server.url, account.connection_id, cookies=dict(session.cookies)),
        404,
        "NOT_FOUND",
    )


def test_lifetime_cap_ends_stream_and_resume_loses_nothing(start_server, account, redis_client):
    capped = start_server(SLUICE_STREAM_MAX_SECONDS="2", SLUICE_HEARTBEAT_SECONDS="0.5")
    cid = account.connection_id
    with open_stream(capped.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest(capped.url, account.api_key, cid, jobs(cid, 3))
        got = stream.data_events(3)
        with pytest.raises(ConnectionError):
            while True:
                stream.next_event(timeout=5)
    ingest(capped.url, account.api_key, cid, jobs(cid, 2))
    with open_stream(capped.url, cid, api_key=account.api_key, last_event_id=got[-1].id) as stream:
        got += stream.data_events(2)
    assert [e.id for e in got] == [i for i, _ in redis_client.xrange(stream_key(cid))]


def test_health_is_not_a_stream(server):
    response = requests.get(server.url + "/api/health", timeout=2)
    assert response.headers["content-type"] == "application/json"
