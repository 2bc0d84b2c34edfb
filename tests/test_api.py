"""The JSON API against a real server: auth, connections, ingest, and every error row."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.util import ingest, job_event, queue_event, worker_event


def error_of(response: requests.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert "Traceback" not in response.text
    return body["error"]


# -- auth -------------------------------------------------------------------


def test_login_me_logout(server, account):
    session = requests.Session()
    response = session.post(
        server.url + "/api/auth/login", json={"email": account.email, "password": account.password}
    )
    assert response.status_code == 200
    assert response.json() == {"user": {"id": account.user_id, "email": account.email}}
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert session.get(server.url + "/api/auth/me").json()["user"]["id"] == account.user_id
    stolen = dict(session.cookies)
    assert session.post(server.url + "/api/auth/logout", json={}).status_code == 204
    assert session.get(server.url + "/api/auth/me").status_code == 401
    # The old cookie is dead server-side too, not only forgotten by the browser.
    assert requests.get(server.url + "/api/auth/me", cookies=stolen).status_code == 401


def test_wrong_password_is_401_json_not_redirect(server, account):
    response = requests.post(
        server.url + "/api/auth/login",
        json={"email": account.email, "password": "wrong password!"},
        allow_redirects=False,
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "UNAUTHORIZED"


def test_unknown_user_is_401(server):
    response = requests.post(
        server.url + "/api/auth/login",
        json={"email": "nobody@example.com", "password": "whatever123"},
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ("not json", "body"),
        ("[1,2]", "body"),
        (json.dumps({"email": "a@b.c"}), "password"),
        (json.dumps({"password": "x" * 10}), "email"),
    ],
)
def test_login_validation(server, body, field):
    response = requests.post(
        server.url + "/api/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"]


def test_cookie_writes_require_json_content_type(server, account):
    """A cross-site HTML form (text/plain, urlencoded) can neither log in nor create."""
    body = json.dumps({"email": account.email, "password": account.password})
    response = requests.post(
        server.url + "/api/auth/login", data=body, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert "Content-Type" in error_of(response)["details"]
    session = account.login(server.url)
    response = session.post(server.url + "/api/connections", data={"name": "x"})
    assert response.status_code == 400
    assert "Content-Type" in error_of(response)["details"]


def test_me_without_session_is_401_not_redirect(server):
    response = requests.get(server.url + "/api/auth/me", allow_redirects=False)
    assert response.status_code == 401
    assert error_of(response)["code"] == "UNAUTHORIZED"


def test_login_rate_limited_with_retry_after(start_server, account):
    limited = start_server(SLUICE_LOGIN_RATE_LIMIT="3 per minute")
    for _ in range(3):
        requests.post(
            limited.url + "/api/auth/login",
            json={"email": account.email, "password": "bad password"},
        )
    response = requests.post(
        limited.url + "/api/auth/login", json={"email": account.email, "password": account.password}
    )
    assert response.status_code == 429
    assert error_of(response)["code"] == "RATE_LIMITED"
    assert int(response.headers["Retry-After"]) > 0


def test_password_is_stored_hashed(redis_client, account):
    stored = redis_client.hget(f"sluice:user:{account.user_id}", "password")
    assert account.password not in stored
    assert stored.startswith("$argon2id$")


# -- connections ------------------------------------------------------------


def test_connections_crud(server, account):
    session = account.login(server.url)
    response = session.post(
        server.url + "/api/connections", json={"name": "Prod", "framework": "sidekiq"}
    )
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "name", "framework", "createdAt", "apiKey"}
    assert created["apiKey"].startswith("sk_live_") and created["framework"] == "sidekiq"
    assert created["createdAt"].endswith("Z") and len(created["createdAt"]) == 24
    listed = session.get(server.url + "/api/connections").json()["data"]
    assert {c["id"] for c in listed} == {account.connection_id, created["id"]}
    assert all(set(c) == {"id", "name", "framework", "createdAt"} for c in listed)
    # The key works until the connection is deleted, then stops at once.
    event = job_event(created["id"], "j", "queued")
    assert ingest(server.url, created["apiKey"], created["id"], [event]).status_code == 202
    assert session.delete(server.url + f"/api/connections/{created['id']}").status_code == 204
    assert ingest(server.url, created["apiKey"], created["id"], [event]).status_code == 401
    assert session.delete(server.url + f"/api/connections/{created['id']}").status_code == 404


def test_default_framework_is_celery(server, account):
    session = account.login(server.url)
    assert (
        session.post(server.url + "/api/connections", json={"name": "x"}).json()["framework"]
        == "celery"
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "framework": "rq"}, "framework"),
        ({"name": 5}, "name"),
    ],
)
def test_connection_validation(server, account, body, field):
    response = account.login(server.url).post(server.url + "/api/connections", json=body)
    assert response.status_code == 400
    assert field in error_of(response)["details"]


def test_connections_require_session(server, account):
    assert requests.get(server.url + "/api/connections").status_code == 401
    assert requests.post(server.url + "/api/connections", json={"name": "x"}).status_code == 401
    # An API key is not a session.
    headers = {"Authorization": f"Bearer {account.api_key}"}
    assert requests.get(server.url + "/api/connections", headers=headers).status_code == 401


def test_foreign_connection_cannot_be_deleted_or_listed(server, account, other_account):
    other = other_account.login(server.url)
    assert account.connection_id not in {
        c["id"] for c in other.get(server.url + "/api/connections").json()["data"]
    }
    response = other.delete(server.url + f"/api/connections/{account.connection_id}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "NOT_FOUND"
    assert other.delete(server.url + "/api/connections/not-a-uuid").status_code == 400


def test_api_key_stored_only_as_hash(redis_client, account):
    stored = redis_client.hgetall(f"sluice:conn:{account.connection_id}")
    assert account.api_key not in json.dumps(stored)
    assert not any(
        account.api_key in key for key in redis_client.scan_iter("sluice:apikey:*", count=1000)
    )


# -- ingest -----------------------------------------------------------------


def test_ingest_accepts_every_event_type(server, account, redis_client):
    cid = account.connection_id
    events = [
        job_event(
            cid,
            "j1",
            "queued",
            queue="default",
            attempt=1,
            progress=0.5,
            createdAt="2026-02-27T10:30:00Z",
            extensions={"celery": {"routing_key": "default"}},
        ),
        worker_event(cid, "celery@w1", "online", kind="worker_state_change", hostname="w1"),
        worker_event(
            cid, "celery@w1", "busy", activeJobs=2, concurrency=4, pid=42, queues=["default"]
        ),
        queue_event(cid, "default", 7, consumers=2),
    ]
    response = ingest(server.url, account.api_key, cid, events)
    assert response.status_code == 202
    assert response.json() == {"accepted": 4, "duplicates": 0}
    entries = redis_client.xrange(f"sluice:{{{cid}}}:events")
    assert [fields["t"] for _, fields in entries] == [
        "job:state_change",
        "worker:state_change",
        "worker:heartbeat",
        "queue:snapshot",
    ]
    job = json.loads(entries[0][1]["d"])
    assert job["externalId"] == "j1" and job["state"] == "queued" and job["previousState"] is None
    assert job["createdAt"] == "2026-02-27T10:30:00.000Z"
    assert job["extensions"] == {"celery": {"routing_key": "default"}}
    assert json.loads(entries[3][1]["d"])["consumers"] == 2


def test_job_id_is_stable_across_events_and_distinct_per_connection(
    server, account, other_account, redis_client
):
    for acc in (account, other_account):
        events = [
            job_event(acc.connection_id, "same-task-id", s)
            for s in ("queued", "active", "completed")
        ]
        assert ingest(server.url, acc.api_key, acc.connection_id, events).status_code == 202
    ids = {}
    for acc in (account, other_account):
        entries = redis_client.xrange(f"sluice:{{{acc.connection_id}}}:events")
        job_ids = {json.loads(f["d"])["id"] for _, f in entries}
        assert len(job_ids) == 1
        ids[acc.connection_id] = job_ids.pop()
    assert len(set(ids.values())) == 2


def test_retried_event_is_not_appended_twice(server, account, redis_client):
    cid = account.connection_id
    batch = [
        job_event(cid, "j", "queued", event_id="evt-1"),
        job_event(cid, "j", "active", event_id="evt-2"),
    ]
    assert ingest(server.url, account.api_key, cid, batch).json() == {
        "accepted": 2,
        "duplicates": 0,
    }
    again = [
        job_event(cid, "j", "queued", event_id="evt-1"),
        job_event(cid, "j", "completed", event_id="evt-3"),
    ]
    assert ingest(server.url, account.api_key, cid, again).json() == {
        "accepted": 1,
        "duplicates": 1,
    }
    assert redis_client.xlen(f"sluice:{{{cid}}}:events") == 3


BAD_EVENTS = [
    ({"type": "job_exploded"}, "events[1].type"),
    ({"timestamp": "yesterday"}, "events[1].timestamp"),
    ({"timestamp": None}, "events[1].timestamp"),
    ({"framework": "rq"}, "events[1].framework"),
    ({"connectionId": str(uuid.uuid4())}, "events[1].connectionId"),
    ({"id": ""}, "events[1].id"),
    ({"job": {"name": "x", "state": "queued"}}, "events[1].job.externalId"),
    (
        {"job": {"externalId": "x" * 513, "name": "x", "state": "queued"}},
        "events[1].job.externalId",
    ),
    ({"job": {"externalId": "x", "name": "n" * 1025, "state": "queued"}}, "events[1].job.name"),
    ({"job": {"externalId": "x", "name": "n", "state": "exploded"}}, "events[1].job.state"),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "attempt": 0}},
        "events[1].job.attempt",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "attempt": True}},
        "events[1].job.attempt",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "progress": 1.5}},
        "events[1].job.progress",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "queue": "q" * 256}},
        "events[1].job.queue",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "failed", "error": "e" * 10_001}},
        "events[1].job.error",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "failed", "stacktrace": "s" * 50_001}},
        "events[1].job.stacktrace",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "startedAt": "soon"}},
        "events[1].job.startedAt",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "extensions": [1]}},
        "events[1].job.extensions",
    ),
    (
        {
            "job": {
                "externalId": "x",
                "name": "n",
                "state": "queued",
                "extensions": {"a": "x" * 9000},
            }
        },
        "events[1].job.extensions",
    ),
    (
        {"job": {"externalId": "x", "name": "n", "state": "queued", "colour": "red"}},
        "events[1].job.colour",
    ),
    ({"job": "not an object"}, "events[1].job"),
]


@pytest.mark.parametrize("change, field", BAD_EVENTS)
def test_invalid_event_rejects_the_whole_batch(server, account, redis_client, change, field):
    cid = account.connection_id
    bad = job_event(cid, "x", "queued")
    bad.update(change)
    if bad.get("timestamp") is None:
        del bad["timestamp"]
    response = ingest(server.url, account.api_key, cid, [job_event(cid, "good", "queued"), bad])
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error["details"]
    assert redis_client.xlen(f"sluice:{{{cid}}}:events") == 0


@pytest.mark.parametrize(
    "event, field",
    [
        (
            {"type": "worker_heartbeat", "worker": {"externalId": "w", "state": "sleepy"}},
            "events[0].worker.state",
        ),
        (
            {
                "type": "worker_heartbeat",
                "worker": {"externalId": "w", "state": "busy", "activeJobs": -1},
            },
            "events[0].worker.activeJobs",
        ),
        (
            {"type": "worker_state_change", "worker": {"state": "online"}},
            "events[0].worker.externalId",
        ),
        ({"type": "queue_snapshot", "queue": {"name": "q"}}, "events[0].queue.depth"),
        ({"type": "queue_snapshot", "queue": {"name": "q", "depth": -3}}, "events[0].queue.depth"),
        (
            {"type": "queue_snapshot", "queue": {"name": "q", "depth": 1, "consumers": "many"}},
            "events[0].queue.consumers",
        ),
        (
            {"type": "queue_snapshot", "job": {"externalId": "x", "name": "n", "state": "queued"}},
            "events[0].queue",
        ),
    ],
)
def test_invalid_worker_and_queue_payloads(server, account, event, field):
    event = {
        "timestamp": "2026-02-27T10:30:00Z",
        "framework": "celery",
        "connectionId": account.connection_id,
        **event,
    }
    response = ingest(server.url, account.api_key, account.connection_id, [event])
    assert response.status_code == 400
    assert field in error_of(response)["details"]


def test_ingest_auth_errors(server, account):
    url = server.url + "/api/ingest"
    body = {"events": [job_event(account.connection_id, "j", "queued")]}
    for headers in (
        {},
        {"Authorization": "Bearer sk_live_nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": account.api_key},
    ):
        response = requests.post(url, json=body, headers=headers)
        assert response.status_code == 401, headers
        assert error_of(response)["code"] == "UNAUTHORIZED"
    # A session is not an API key.
    session = account.login(server.url)
    assert session.post(url, json=body).status_code == 401


def test_key_cannot_ingest_into_another_connection(server, account, other_account, redis_client):
    event = job_event(other_account.connection_id, "j", "queued")
    response = ingest(server.url, account.api_key, other_account.connection_id, [event])
    assert response.status_code == 400
    assert "events[0].connectionId" in error_of(response)["details"]
    assert redis_client.xlen(f"sluice:{{{other_account.connection_id}}}:events") == 0


def test_ingest_body_errors(server, account):
    headers = {"Authorization": f"Bearer {account.api_key}", "Content-Type": "application/json"}
    url = server.url + "/api/ingest"
    for body in (
        "{not json",
        "[]",
        json.dumps({"events": []}),
        json.dumps({"events": "x"}),
        json.dumps({}),
    ):
        response = requests.post(url, data=body, headers=headers)
        assert response.status_code == 400, body
        assert error_of(response)["code"] == "VALIDATION_ERROR"


def test_ingest_limits_are_413(start_server, account, redis_client):
    small = start_server(SLUICE_MAX_BATCH_EVENTS="5", SLUICE_MAX_BODY_BYTES="20000")
    cid = account.connection_id
    response = ingest(
        small.url, account.api_key, cid, [job_event(cid, f"j{i}", "queued") for i in range(6)]
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
    big = job_event(cid, "j", "failed", stacktrace="s" * 30_000)
    response = ingest(small.url, account.api_key, cid, [big])
    assert response.status_code == 413
    assert error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
    assert redis_client.xlen(f"sluice:{{{cid}}}:events") == 0


def test_ingest_rate_limited(start_server, account):
    limited = start_server(SLUICE_INGEST_RATE_LIMIT="2 per minute")
    cid = account.connection_id
    codes = [
        ingest(limited.url, account.api_key, cid, [job_event(cid, "j", "queued")]).status_code
        for _ in range(3)
    ]
    assert codes[:2] == [202, 202] and codes[2] == 429


def test_retention_is_bounded(start_server, account, redis_client):
    short = start_server(SLUICE_STREAM_MAXLEN="50")
    cid = account.connection_id
    for _ in range(10):
        batch = [job_event(cid, f"j{i}", "queued") for i in range(100)]
        assert ingest(short.url, account.api_key, cid, batch).status_code == 202
    # MAXLEN ~ trims whole macro nodes: bounded, though not exactly 50.
    assert redis_client.xlen(f"sluice:{{{cid}}}:events") < 300


def test_unknown_route_and_method_are_json(server):
    response = requests.get(server.url + "/api/nope")
    assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND"
    response = requests.put(server.url + "/api/ingest")
    assert response.status_code == 405 and "Traceback" not in response.text


def test_health(server):
    body = requests.get(server.url + "/api/health").json()
    assert body["status"] == "ok"


def test_rate_limit_uses_forwarded_client_ip_only_behind_trusted_proxy(start_server, account):
    """Behind one trusted proxy, different X-Forwarded-For clients have separate login limits;
    without it, a client cannot dodge the limit by forging the header."""
    proxied = start_server(SLUICE_LOGIN_RATE_LIMIT="2 per minute", SLUICE_TRUSTED_PROXIES="1")
    direct = start_server(SLUICE_LOGIN_RATE_LIMIT="2 per minute")
    body = {"email": account.email, "password": "wrong password"}
    for srv, expect_third in ((proxied, 401), (direct, 429)):
        codes = [
            requests.post(
                srv.url + "/api/auth/login", json=body, headers={"X-Forwarded-For": f"10.0.0.{i}"}
            ).status_code
            for i in (1, 1, 2)
        ]
        assert codes[:2] == [401, 401]
        assert codes[2] == expect_third
