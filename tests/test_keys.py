"""API keys: rotating a connection's ingest key (issue 13, item 9); read keys and
the read-only mode (item 8, access); what a key is, `GET /api/key` (item 10)."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.sse import open_stream, read_error_body
from tests.test_cli import sluice
from tests.util import ingest, job_event


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def rotate(session: requests.Session, base_url: str, connection_id: str) -> requests.Response:
    return session.post(f"{base_url}/api/connections/{connection_id}/rotate-key", json={})


def error_code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


# -- rotation ---------------------------------------------------------------------


def test_rotation_stops_the_old_key_and_keeps_the_history(server, account, redis_client):
    cid = account.connection_id
    old = account.api_key
    assert ingest(server.url, old, cid, [job_event(cid, "before", "completed")]).status_code == 202
    session = account.login(server.url)

    response = rotate(session, server.url, cid)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"apiKey"}
    new = response.json()["apiKey"]
    assert new.startswith("sk_live_") and new != old

    # The old key: 401 at once, on ingest and on opening a stream.
    refused = ingest(server.url, old, cid, [job_event(cid, "late", "queued")])
    assert refused.status_code == 401 and error_code(refused) == "UNAUTHORIZED"
    with open_stream(server.url, cid, api_key=old) as stream:
        assert stream.status == 401
        assert read_error_body(stream)["error"]["code"] == "UNAUTHORIZED"
    jobs_old = requests.get(f"{server.url}/api/connections/{cid}/jobs", headers=bearer(old))
    assert jobs_old.status_code == 401

    # The new key streams, ingests; the history from before is there.
    with open_stream(server.url, cid, api_key=new) as stream:
        assert stream.status == 200
        stream.read_bytes(1)
        accepted = ingest(server.url, new, cid, [job_event(cid, "after", "active")])
        assert accepted.status_code == 202, accepted.text
        (event,) = stream.data_events(1)
        assert event.json()["externalId"] == "after"
    listed = requests.get(f"{server.url}/api/connections/{cid}/jobs", headers=bearer(new))
    assert listed.status_code == 200
    assert {j["externalId"] for j in listed.json()["data"]} == {"before", "after"}
    # Same connection, same id; the secret is stored only hashed.
    assert [c["id"] for c in session.get(f"{server.url}/api/connections").json()["data"]] == [cid]
    dump = json.dumps({k: redis_client.hgetall(k) for k in [f"sluice:conn:{cid}"]})
    assert new not in dump and old not in dump


def test_a_stream_opened_with_the_old_key_runs_on_until_it_reconnects(server, account):
    """The documented choice: rotation does not cut open streams (not even those
    opened with the old key); their next reconnect needs the new key."""
    cid = account.connection_id
    with open_stream(server.url, cid, api_key=account.api_key) as stream:
        assert stream.status == 200
        stream.read_bytes(1)
        new = rotate(account.login(server.url), server.url, cid).json()["apiKey"]
        assert ingest(server.url, new, cid, [job_event(cid, "j", "active")]).status_code == 202
        (event,) = stream.data_events(1)
        assert event.json()["externalId"] == "j"
    with open_stream(server.url, cid, api_key=account.api_key) as again:
        assert again.status == 401


def test_an_owner_session_stream_survives_rotation(server, account):
    cid = account.connection_id
    session = account.login(server.url)
    with open_stream(server.url, cid, cookies=dict(session.cookies)) as stream:
        assert stream.status == 200
        stream.read_bytes(1)
        new = rotate(session, server.url, cid).json()["apiKey"]
        assert ingest(server.url, new, cid, [job_event(cid, "j", "queued")]).status_code == 202
        (event,) = stream.data_events(1)
        assert event.json()["state"] == "queued"


def test_rotation_is_the_owners_only(server, account, other_account):
    cid = account.connection_id
    stranger = other_account.login(server.url)
    assert rotate(stranger, server.url, cid).status_code == 404
    assert rotate(stranger, server.url, str(uuid.uuid4())).status_code == 404
    response = rotate(stranger, server.url, "not-a-uuid")
    assert response.status_code == 400 and "id" in response.json()["error"]["details"]
    anonymous = requests.post(f"{server.url}/api/connections/{cid}/rotate-key", json={})
    assert anonymous.status_code == 401
    # A key is not a session: it cannot rotate itself.
    with_key = requests.post(
        f"{server.url}/api/connections/{cid}/rotate-key", json={}, headers=bearer(account.api_key)
    )
    assert with_key.status_code == 401
    # Nothing changed.
    assert ingest(server.url, account.api_key, cid, [job_event(cid, "j", "queued")]).ok


def test_rotation_follows_the_rules_of_session_writes(server, account):
    session = account.login(server.url)
    url = f"{server.url}/api/connections/{account.connection_id}/rotate-key"
    assert session.post(url, data="x", headers={"Content-Type": "text/plain"}).status_code == 400
    cross = session.post(url, json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert ingest(
        server.url,
        account.api_key,
        account.connection_id,
        [job_event(account.connection_id, "j", "queued")],
    ).ok


def test_rotate_key_command_prints_json(redis_url, server, account):
    cid = account.connection_id
    done = sluice("rotate-key", "--user", account.email, cid, redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed) == {"id", "name", "apiKey"}
    assert printed["id"] == cid and printed["name"] == "Test cluster"
    assert ingest(server.url, printed["apiKey"], cid, [job_event(cid, "j", "queued")]).ok
    assert (
        ingest(server.url, account.api_key, cid, [job_event(cid, "k", "queued")]).status_code == 401
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--user", "nobody@example.com", str(uuid.uuid4())), "no user"),
        (("--user", "EMAIL", str(uuid.uuid4())), "Connection not found"),
        (("--user", "EMAIL", "nope"), "CONNECTION_ID"),
    ],
)
def test_rotate_key_command_errors_are_one_line(redis_url, account, args, message):
    args = tuple(account.email if a == "EMAIL" else a for a in args)
    done = sluice("rotate-key", *args, redis_url=redis_url)
    assert done.returncode == 1 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr
