"""Several Sluice instances on one Redis: two separately started gunicorn servers
(each with its own hub, its own pub/sub connection and no shared memory) behave
as one service. State lives only in Redis."""

from __future__ import annotations

import pytest
import requests

from tests.sse import open_stream, read_error_body
from tests.util import ingest, jobs

#: Each instance is its own gunicorn master with two workers. The safety-net sweep
#: is a minute away: what arrives in seconds came through the notifications.
TWO_WORKERS = {"WEB_CONCURRENCY": "2", "SLUICE_READ_BLOCK_MS": "60000"}


@pytest.fixture
def a_and_b(start_server):
    return start_server(**TWO_WORKERS), start_server(**TWO_WORKERS)


def test_an_event_ingested_on_one_instance_reaches_streams_on_the_other(a_and_b, account):
    a, b = a_and_b
    cid = account.connection_id
    with (
        open_stream(b.url, cid, api_key=account.api_key) as on_b,
        open_stream(a.url, cid, api_key=account.api_key) as on_a,
    ):
        on_b.read_bytes(1)
        on_a.read_bytes(1)
        events = jobs(cid, 3)
        assert ingest(a.url, account.api_key, cid, events).status_code == 202
        want = [e["job"]["externalId"] for e in events]
        got_b = on_b.data_events(3)
        got_a = on_a.data_events(3)
        assert [e.json()["externalId"] for e in got_b] == want
        # The same entries, the same ids, whichever instance serves the stream.
        assert [e.id for e in got_b] == [e.id for e in got_a]
        # A client that moves to the other instance resumes where it was.
        later = jobs(cid, 2)
        assert ingest(b.url, account.api_key, cid, later).status_code == 202
    with open_stream(a.url, cid, api_key=account.api_key, last_event_id=got_b[-1].id) as moved:
        resumed = moved.data_events(2)
        assert [e.json()["externalId"] for e in resumed] == [e["job"]["externalId"] for e in later]


def test_deleting_a_connection_on_one_instance_ends_its_streams_on_the_other(a_and_b, account):
    a, b = a_and_b
    session = account.login(a.url)
    with open_stream(b.url, account.connection_id, api_key=account.api_key) as on_b:
        on_b.read_bytes(1)
        assert (
            session.delete(a.url + f"/api/connections/{account.connection_id}").status_code == 204
        )
        with pytest.raises(ConnectionError):
            while True:
                on_b.next_event(timeout=5)
    # The key stopped working everywhere.
    again = open_stream(b.url, account.connection_id, api_key=account.api_key)
    assert again.status == 401
    assert read_error_body(again)["error"]["code"] == "UNAUTHORIZED"
    again.close()


def test_a_session_made_on_one_instance_works_and_ends_on_the_other(a_and_b, account):
    a, b = a_and_b
    session = account.login(a.url)
    assert session.get(b.url + "/api/auth/me", timeout=5).status_code == 200
    copied = dict(session.cookies)  # the cookie as it was before logout
    assert session.post(a.url + "/api/auth/logout", json={}, timeout=5).status_code == 204
    # Replayed on the other instance: the session was revoked in Redis.
    assert requests.get(b.url + "/api/auth/me", cookies=copied, timeout=5).status_code == 401


def test_rate_limits_are_shared_by_the_instances(start_server, account):
    limited = {**TWO_WORKERS, "SLUICE_INGEST_RATE_LIMIT": "6 per minute"}
    a, b = start_server(**limited), start_server(**limited)
    cid = account.connection_id
    statuses = [
        ingest(server.url, account.api_key, cid, jobs(cid, 1)).status_code
        for server in (a, b, a, b, a, b)
    ]
    assert statuses == [202] * 6
    refused = ingest(b.url, account.api_key, cid, jobs(cid, 1))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert ingest(a.url, account.api_key, cid, jobs(cid, 1)).status_code == 429
