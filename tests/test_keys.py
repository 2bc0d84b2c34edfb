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


# -- read keys ---------------------------------------------------------------------


def keys_url(base_url: str, connection_id: str) -> str:
    return f"{base_url}/api/connections/{connection_id}/keys"


def new_read_key(session: requests.Session, base_url: str, connection_id: str) -> dict:
    response = session.post(keys_url(base_url, connection_id), json={"scope": "read"})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_read_key_reads_and_cannot_ingest(server, account, redis_client):
    cid = account.connection_id
    session = account.login(server.url)
    created = new_read_key(session, server.url, cid)
    assert set(created) == {"id", "apiKey", "scope", "prefix", "createdAt"}
    assert created["scope"] == "read" and created["apiKey"].startswith(created["prefix"])
    read_key = created["apiKey"]
    assert ingest(server.url, account.api_key, cid, [job_event(cid, "j1", "queued")]).ok

    with open_stream(server.url, cid, api_key=read_key, last_event_id="0") as stream:
        assert stream.status == 200
        (event,) = stream.data_events(1)
        assert event.json()["externalId"] == "j1"
    for path in ("jobs", "jobs/j1", "workers", "queues"):
        got = requests.get(f"{server.url}/api/connections/{cid}/{path}", headers=bearer(read_key))
        assert got.status_code == 200, (path, got.text)

    refused = ingest(server.url, read_key, cid, [job_event(cid, "j2", "queued")])
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "FORBIDDEN",
        "message": "This API key is read-only: it may read streams and jobs, not write",
        "details": {"scope": "read"},
    }
    # Only its hash is kept.
    assert read_key not in json.dumps(
        {k: str(v) for k, v in redis_client.hgetall(f"sluice:conn:{cid}:keys").items()}
    )
    # Another connection's stream: 404, as for any key.
    with open_stream(server.url, str(uuid.uuid4()), api_key=read_key) as stream:
        assert stream.status == 404


def test_keys_are_listed_without_secrets_and_revoked(server, account):
    cid = account.connection_id
    session = account.login(server.url)
    first = new_read_key(session, server.url, cid)
    second = new_read_key(session, server.url, cid)
    listed = session.get(keys_url(server.url, cid))
    assert listed.status_code == 200
    data = listed.json()["data"]
    assert [k["id"] for k in data] == ["ingest", first["id"], second["id"]]
    assert data[0]["scope"] == "write" and account.api_key.startswith(data[0]["prefix"])
    assert all(set(k) == {"id", "scope", "prefix", "createdAt"} for k in data)
    text = listed.text
    assert first["apiKey"] not in text and account.api_key not in text

    gone = session.delete(f"{keys_url(server.url, cid)}/{first['id']}")
    assert gone.status_code == 204
    refused = requests.get(
        f"{server.url}/api/connections/{cid}/jobs", headers=bearer(first["apiKey"])
    )
    assert refused.status_code == 401
    assert [k["id"] for k in session.get(keys_url(server.url, cid)).json()["data"]] == [
        "ingest",
        second["id"],
    ]
    assert session.delete(f"{keys_url(server.url, cid)}/{first['id']}").status_code == 404
    # The ingest key is rotated, not deleted.
    kept = session.delete(f"{keys_url(server.url, cid)}/ingest")
    assert kept.status_code == 409 and "rotate" in kept.json()["error"]["message"]
    # Rotation leaves read keys alone.
    assert rotate(session, server.url, cid).status_code == 200
    assert requests.get(f"{server.url}/api/key", headers=bearer(second["apiKey"])).ok


def test_keys_are_the_owners_only(server, account, other_account):
    cid = account.connection_id
    stranger = other_account.login(server.url)
    assert stranger.post(keys_url(server.url, cid), json={"scope": "read"}).status_code == 404
    assert stranger.get(keys_url(server.url, cid)).status_code == 404
    mine = new_read_key(account.login(server.url), server.url, cid)
    assert stranger.delete(f"{keys_url(server.url, cid)}/{mine['id']}").status_code == 404
    assert (
        requests.get(keys_url(server.url, cid), headers=bearer(account.api_key)).status_code == 401
    )
    assert requests.get(f"{server.url}/api/key", headers=bearer(mine["apiKey"])).ok


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "scope"),
        ({"scope": "write"}, "scope"),
        ({"scope": "admin"}, "scope"),
        ({"scope": ["read"]}, "scope"),
        ({"scope": None}, "scope"),
        ({"scope": "read", "name": "x"}, "name"),
    ],
)
def test_bad_key_bodies_are_400(server, account, body, field):
    session = account.login(server.url)
    response = session.post(keys_url(server.url, account.connection_id), json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["details"]


def test_keys_per_connection_are_bounded(server, account):
    from sluice.store.connections import MAX_KEYS_PER_CONNECTION

    session = account.login(server.url)
    for _ in range(MAX_KEYS_PER_CONNECTION - 1):  # the ingest key is one of them
        new_read_key(session, server.url, account.connection_id)
    full = session.post(keys_url(server.url, account.connection_id), json={"scope": "read"})
    assert full.status_code == 409
    assert str(MAX_KEYS_PER_CONNECTION) in full.json()["error"]["message"]


def test_deleting_a_connection_deletes_its_keys(server, account, redis_client):
    cid = account.connection_id
    session = account.login(server.url)
    read_key = new_read_key(session, server.url, cid)["apiKey"]
    assert session.delete(f"{server.url}/api/connections/{cid}").status_code == 204
    for key in (read_key, account.api_key):
        assert requests.get(f"{server.url}/api/key", headers=bearer(key)).status_code == 401
    assert not redis_client.exists(f"sluice:conn:{cid}:keys")


# -- read-only mode ----------------------------------------------------------------


@pytest.fixture(scope="module")
def read_only_server(start_server):
    return start_server(SLUICE_READ_ONLY="1")


def test_read_only_mode_refuses_writes_and_keeps_reading(read_only_server, account):
    base = read_only_server.url
    cid = account.connection_id
    session = account.login(base)  # login works
    refused = ingest(base, account.api_key, cid, [job_event(cid, "j", "queued")])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FORBIDDEN"
    assert "readOnly" in refused.json()["error"]["details"]
    writes = [
        session.post(f"{base}/api/connections", json={"name": "more"}),
        session.delete(f"{base}/api/connections/{cid}"),
        rotate(session, base, cid),
        session.post(keys_url(base, cid), json={"scope": "read"}),
        session.delete(f"{keys_url(base, cid)}/{uuid.uuid4()}"),
    ]
    for response in writes:
        assert response.status_code == 403, response.text
        assert "readOnly" in response.json()["error"]["details"]
    # Reading goes on: the list, the keys, the job API, the stream, the key itself.
    assert session.get(f"{base}/api/connections").status_code == 200
    assert session.get(keys_url(base, cid)).status_code == 200
    assert requests.get(f"{base}/api/connections/{cid}/jobs", headers=bearer(account.api_key)).ok
    assert requests.get(f"{base}/api/key", headers=bearer(account.api_key)).ok
    with open_stream(base, cid, api_key=account.api_key) as stream:
        assert stream.status == 200
    # A bad key is still a 401 first.
    assert ingest(base, "sk_live_forged", cid, []).status_code == 401
    # The dashboard learns it from its config (and shows no action buttons).
    assert requests.get(f"{base}/api/config", timeout=10).json()["readOnly"] is True
    assert session.post(f"{base}/api/auth/logout", json={}).status_code == 204


# -- what a key is -------------------------------------------------------------------


def test_get_key_says_which_connection_and_scope(server, account):
    cid = account.connection_id
    got = requests.get(f"{server.url}/api/key", headers=bearer(account.api_key))
    assert got.status_code == 200
    assert got.json() == {"connectionId": cid, "name": "Test cluster", "scope": "write"}
    read_key = new_read_key(account.login(server.url), server.url, cid)["apiKey"]
    got = requests.get(f"{server.url}/api/key", headers=bearer(read_key))
    assert got.json() == {"connectionId": cid, "name": "Test cluster", "scope": "read"}
    for headers in ({}, bearer("sk_live_forged"), {"Authorization": "Basic x"}):
        bad = requests.get(f"{server.url}/api/key", headers=headers)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "UNAUTHORIZED"
    # A session is not a key.
    assert account.login(server.url).get(f"{server.url}/api/key").status_code == 401


def test_a_change_under_way_is_a_409_and_leaves_the_key_alone(server, account, redis_client):
    """Key changes of one connection take its key lock: while it is held (another
    rotation, a deletion), rotating is a 409 with Retry-After and changes nothing."""
    from sluice.store.keys import Keys
    from sluice.store.users import hash_api_key

    cid = account.connection_id
    session = account.login(server.url)
    redis_client.set(Keys.key_lock(cid), "someone else", ex=10)
    try:
        busy = rotate(session, server.url, cid)
        assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
        busy = session.post(keys_url(server.url, cid), json={"scope": "read"})
        assert busy.status_code == 409
    finally:
        redis_client.delete(Keys.key_lock(cid))
    assert ingest(server.url, account.api_key, cid, [job_event(cid, "j", "queued")]).ok
    # Once free: the old lookup is gone, the connection records the new hash.
    new = rotate(session, server.url, cid).json()["apiKey"]
    assert not redis_client.exists(Keys.api_key(hash_api_key(account.api_key)))
    assert redis_client.get(Keys.api_key(hash_api_key(new))) in (cid, cid.encode())
    stored = redis_client.hget(Keys.connection(cid), "keyHash")
    assert stored in (hash_api_key(new), hash_api_key(new).encode())
    assert not redis_client.exists(Keys.key_lock(cid))
