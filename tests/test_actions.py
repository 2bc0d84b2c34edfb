"""Operator actions through the API on a real gunicorn+gevent and a real Redis:
the owner's session issues commands, the agent's write key reads them from the
command stream, and the agent's `command_result` reaches the event stream."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests

from sluice import contract as c
from sluice.store.keys import Keys
from tests.sse import open_stream
from tests.util import ingest, job_event, now, wait_until, worker_event


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def base(server, cid: str) -> str:
    return f"{server.url}/api/connections/{cid}"


def read_commands(server, account, **params) -> requests.Response:
    return requests.get(
        base(server, account.connection_id) + "/commands",
        params=params,
        headers=bearer(account.api_key),
        timeout=40,
    )


def commands_after(server, account, after: str | None = None) -> list[dict]:
    params = {"after": after} if after else {}
    response = read_commands(server, account, **params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def seed(server, account, job_state: str = "failed") -> None:
    """One job `t1` (queue `celery`) and one worker `w1@host`."""
    cid = account.connection_id
    events = [
        job_event(cid, "t1", job_state, name="app.add", queue="celery"),
        worker_event(cid, "w1@host", "online", hostname="host"),
    ]
    assert ingest(server.url, account.api_key, cid, events).status_code == 202


def command_result(cid: str, command_id: str, **fields) -> dict:
    return {
        "type": "command_result",
        "timestamp": now(),
        "framework": "celery",
        "connectionId": cid,
        "command": {"commandId": command_id, "action": "retry", "status": "done", **fields},
    }


# -- each endpoint: 202 and the command on the stream ---------------------------------


def test_job_actions_put_their_command_on_the_stream(server, account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    job = requests.get(base(server, cid) + "/jobs/t1", headers=bearer(account.api_key)).json()
    job_id = job["data"]["id"]
    ids = []
    for ref, body in (
        ("t1", {"action": "revoke"}),
        (job_id, {"action": "terminate", "signal": "SIGKILL"}),
        ("t1", {"action": "retry"}),
    ):
        before = time.time()
        response = session.post(f"{base(server, cid)}/jobs/{ref}/actions", json=body)
        assert response.status_code == 202, response.text
        assert set(response.json()) == {"commandId"}
        ids.append((response.json()["commandId"], before))
    found = commands_after(server, account)
    assert [f["commandId"] for f in found] == [i for i, _ in ids]
    assert all(uuid.UUID(i).version == 4 for i, _ in ids)
    expected_job = {"id": job_id, "externalId": "t1", "name": "app.add", "queue": "celery"}
    revoke, terminate, retry = found
    assert set(revoke) == {"streamId", "commandId", "action", "requestedAt", "job"}
    assert revoke["action"] == "revoke" and revoke["job"] == expected_job
    assert terminate["action"] == "terminate" and terminate["signal"] == "SIGKILL"
    assert terminate["job"] == expected_job
    assert retry["action"] == "retry" and "signal" not in retry
    requested = datetime.fromisoformat(retry["requestedAt"]).timestamp()
    assert retry["requestedAt"].endswith("Z") and abs(requested - ids[2][1]) < 5
    # The stream's ids, in order; `lastId` is the last.
    answer = read_commands(server, account).json()
    assert answer["lastId"] == found[-1]["streamId"]
    assert commands_after(server, account, found[0]["streamId"]) == found[1:]
    assert commands_after(server, account, answer["lastId"]) == []


def test_terminate_sends_sigterm_by_default(server, account):
    seed(server, account, "active")
    session = account.login(server.url)
    url = f"{base(server, account.connection_id)}/jobs/t1/actions"
    assert session.post(url, json={"action": "terminate"}).status_code == 202
    assert commands_after(server, account)[0]["signal"] == "SIGTERM"


def test_bulk_retry_puts_its_filter_on_the_stream(server, account):
    session = account.login(server.url)
    body = {"action": "retry", "filter": {"state": "failed", "queue": "celery", "q": "add"}}
    response = session.post(f"{base(server, account.connection_id)}/jobs/actions", json=body)
    assert response.status_code == 202, response.text
    (found,) = commands_after(server, account)
    assert found["commandId"] == response.json()["commandId"]
    assert found["action"] == "bulk_retry"
    assert found["filter"] == {"state": "failed", "queue": "celery", "q": "add"}
    assert "job" not in found and "worker" not in found


def test_worker_actions_by_external_id_or_id(server, account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    workers = requests.get(base(server, cid) + "/workers", headers=bearer(account.api_key)).json()
    worker_id = workers["data"][0]["id"]
    for ref, body in (
        ("w1@host", {"action": "pool_grow"}),
        (worker_id, {"action": "pool_shrink", "n": 3}),
        ("w1@host", {"action": "shutdown"}),
    ):
        response = session.post(f"{base(server, cid)}/workers/{ref}/actions", json=body)
        assert response.status_code == 202, response.text
    grow, shrink, shutdown = commands_after(server, account)
    expected = {"id": worker_id, "externalId": "w1@host"}
    assert (grow["action"], grow["n"], grow["worker"]) == ("pool_grow", 1, expected)
    assert (shrink["action"], shrink["n"], shrink["worker"]) == ("pool_shrink", 3, expected)
    assert shutdown["action"] == "shutdown" and "n" not in shutdown
    assert shutdown["worker"] == expected


# -- a double click is one command ----------------------------------------------------


def test_the_same_action_twice_is_one_command_until_its_result(server, account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    url = f"{base(server, cid)}/jobs/t1/actions"
    first = session.post(url, json={"action": "retry"})
    second = session.post(url, json={"action": "retry"})
    assert first.status_code == second.status_code == 202
    assert first.json()["commandId"] == second.json()["commandId"]
    assert len(commands_after(server, account)) == 1
    # Another action on the same job is another command.
    other = session.post(url, json={"action": "revoke"})
    assert other.json()["commandId"] != first.json()["commandId"]
    assert len(commands_after(server, account)) == 2
    # Once the result is in, the command leaves the stream (an agent that starts again
    # never carries it out twice), and the same action makes a new command.
    result = command_result(cid, first.json()["commandId"], detail={"newJobId": "t2"})
    assert ingest(server.url, account.api_key, cid, [result]).status_code == 202
    left = commands_after(server, account)
    assert [cmd["commandId"] for cmd in left] == [other.json()["commandId"]]
    third = session.post(url, json={"action": "retry"})
    assert third.json()["commandId"] != first.json()["commandId"]
    assert len(commands_after(server, account)) == 2


def test_the_guard_expires_with_the_dedupe_window(server, account, redis_client):
    session = account.login(server.url)
    body = {"action": "retry", "filter": {"state": "failed"}}
    command_id = session.post(f"{base(server, account.connection_id)}/jobs/actions", json=body)
    command_id = command_id.json()["commandId"]
    guards = list(redis_client.scan_iter(Keys.command_once(account.connection_id, "*")))
    assert len(guards) == 1
    assert redis_client.get(guards[0]) == command_id
    assert 0 < redis_client.ttl(guards[0]) <= c.COMMAND_DEDUPE_SECONDS


# -- who may act ------------------------------------------------------------------------


def test_not_found(server, account, other_account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    cases = [
        (f"{base(server, cid)}/jobs/nope/actions", {"action": "retry"}),
        (f"{base(server, cid)}/workers/w9@host/actions", {"action": "shutdown"}),
        (f"{base(server, cid)}/workers/{uuid.uuid4()}/actions", {"action": "shutdown"}),
        (f"{base(server, str(uuid.uuid4()))}/jobs/t1/actions", {"action": "retry"}),
        (
            f"{base(server, other_account.connection_id)}/jobs/actions",
            {
                "action": "retry",
                "filter": {"state": "failed"},
            },
        ),
    ]
    for url, body in cases:
        response = session.post(url, json=body)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert commands_after(server, account) == []


def test_keys_cannot_act_and_nobody_can_without_credentials(server, account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    read_key = session.post(f"{base(server, cid)}/keys", json={"scope": "read"}).json()["apiKey"]
    targets = [
        (f"{base(server, cid)}/jobs/t1/actions", {"action": "revoke"}),
        (f"{base(server, cid)}/jobs/actions", {"action": "retry", "filter": {"state": "failed"}}),
        (f"{base(server, cid)}/workers/w1@host/actions", {"action": "pool_grow"}),
    ]
    for url, body in targets:
        for key in (account.api_key, read_key):
            refused = requests.post(url, json=body, headers=bearer(key), timeout=10)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "FORBIDDEN"
        # A key and a session: the key still forbids.
        both = session.post(url, json=body, headers=bearer(account.api_key))
        assert both.status_code == 403
        assert requests.post(url, json=body, timeout=10).status_code == 401
        assert (
            requests.post(url, json=body, headers=bearer("sk_live_x"), timeout=10).status_code
            == 401
        )
        cross = session.post(url, json=body, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
    assert commands_after(server, account) == []


def test_the_command_stream_needs_the_write_key(server, account, other_account):
    cid = account.connection_id
    session = account.login(server.url)
    read_key = session.post(f"{base(server, cid)}/keys", json={"scope": "read"}).json()["apiKey"]
    url = base(server, cid) + "/commands"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers=bearer("sk_live_forged"), timeout=10).status_code == 401
    assert requests.get(url, headers=bearer(read_key), timeout=10).status_code == 403
    assert session.get(url).status_code == 403
    other = requests.get(url, headers=bearer(other_account.api_key), timeout=10)
    assert other.status_code == 404
    ok = requests.get(url, headers=bearer(account.api_key), timeout=10)
    assert ok.status_code == 200 and ok.json()["data"] == []


@pytest.fixture(scope="module")
def read_only_server(start_server):
    return start_server(SLUICE_READ_ONLY="1")


def test_read_only_mode_refuses_actions(read_only_server, account):
    seed_events = [job_event(account.connection_id, "t1", "failed")]
    server = read_only_server
    assert (
        ingest(server.url, account.api_key, account.connection_id, seed_events).status_code == 403
    )
    session = account.login(server.url)
    cid = account.connection_id
    for url, body in (
        (f"{base(server, cid)}/jobs/t1/actions", {"action": "retry"}),
        (f"{base(server, cid)}/jobs/actions", {"action": "retry", "filter": {"state": "failed"}}),
        (f"{base(server, cid)}/workers/w1@host/actions", {"action": "shutdown"}),
    ):
        refused = session.post(url, json=body)
        assert refused.status_code == 403, refused.text
        assert "readOnly" in refused.json()["error"]["details"]
    assert commands_after(server, account) == []


# -- bad requests ------------------------------------------------------------------------


def test_bad_bodies_and_parameters_are_400(server, account):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    job_url = f"{base(server, cid)}/jobs/t1/actions"
    bulk_url = f"{base(server, cid)}/jobs/actions"
    worker_url = f"{base(server, cid)}/workers/w1@host/actions"
    cases = [
        (job_url, {}, "action"),
        (job_url, {"action": "shutdown"}, "action"),
        (job_url, {"action": "terminate", "signal": "SIGSEGV"}, "signal"),
        (job_url, {"action": "retry", "extra": 1}, "extra"),
        (bulk_url, {"action": "retry"}, "filter"),
        (bulk_url, {"action": "retry", "filter": {"state": "completed"}}, "filter.state"),
        (worker_url, {"action": "pool_grow", "n": 0}, "n"),
        (worker_url, {"action": "pool_grow", "n": 101}, "n"),
        (worker_url, {"action": "revoke"}, "action"),
    ]
    for url, body, field in cases:
        response = session.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and field in error["details"], error
    for raw, content_type in (("[]", "application/json"), ("{", "application/json")):
        response = session.post(job_url, data=raw, headers={"Content-Type": content_type})
        assert response.status_code == 400
    plain = session.post(job_url, data="{}", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 400
    assert (
        session.post(f"{server.url}/api/connections/nope/jobs/actions", json={}).status_code == 400
    )
    for params in ({"after": "x"}, {"wait": "26"}, {"wait": "-1"}, {"wait": "soon"}):
        response = read_commands(server, account, **params)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert commands_after(server, account) == []


@pytest.fixture(scope="module")
def limited_server(start_server):
    return start_server(SLUICE_ACTIONS_RATE_LIMIT="3 per minute")


def test_actions_are_rate_limited_per_connection(limited_server, account, other_account):
    server = limited_server
    session = account.login(server.url)
    body = {"action": "retry", "filter": {"state": "failed"}}
    url = f"{base(server, account.connection_id)}/jobs/actions"
    # Another user's requests on this connection (404), under any spelling of its id,
    # use up their own budget, never the owner's.
    intruder = other_account.login(server.url)
    spellings = [url, url.replace(account.connection_id, account.connection_id.upper())]
    assert [intruder.post(u, json=body).status_code for u in spellings * 2] == [404] * 3 + [429]
    statuses = [session.post(url, json=body).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    limited = session.post(url, json=body)
    assert limited.json()["error"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) > 0
    # Another connection has its own budget.
    other = other_account.login(server.url)
    other_url = f"{base(server, other_account.connection_id)}/jobs/actions"
    assert other.post(other_url, json=body).status_code == 202
    # Refused requests (no session) do not use the budget up: still 401, not 429.
    assert requests.post(url, json=body, timeout=10).status_code == 401


# -- the agent's long poll ---------------------------------------------------------------


def test_a_waiting_read_returns_when_a_command_is_issued(server, account):
    seed(server, account)
    session = account.login(server.url)
    first = read_commands(server, account)
    assert first.status_code == 200 and first.json()["data"] == []
    after = first.json()["lastId"]
    # Nothing comes: the read waits about `wait` seconds and says where it was.
    started = time.monotonic()
    empty = read_commands(server, account, after=after, wait="1")
    assert 0.9 <= time.monotonic() - started < 5
    assert empty.json() == {"data": [], "lastId": after}
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(read_commands, server, account, after=after, wait="20")
        issued = session.post(
            f"{base(server, account.connection_id)}/jobs/t1/actions", json={"action": "retry"}
        )
        assert issued.status_code == 202
        answer = waiting.result(timeout=30)
    assert answer.status_code == 200
    assert time.monotonic() - started < 15
    (found,) = answer.json()["data"]
    assert found["commandId"] == issued.json()["commandId"]
    assert answer.json()["lastId"] == found["streamId"]


def test_a_read_without_after_gives_the_last_minute(server, account, redis_client):
    cid = account.connection_id
    old_ms = int(time.time() * 1000) - (c.COMMAND_MAX_AGE_SECONDS + 5) * 1000
    redis_client.xadd(Keys.commands(cid), {"c": '{"commandId":"old"}'}, id=f"{old_ms}-0")
    session = account.login(server.url)
    body = {"action": "retry", "filter": {"state": "failed"}}
    new = session.post(f"{base(server, cid)}/jobs/actions", json=body).json()["commandId"]
    assert [f["commandId"] for f in commands_after(server, account)] == [new]
    assert [f["commandId"] for f in commands_after(server, account, "0-0")] == ["old", new]


# -- the result on the event stream -----------------------------------------------------


def test_a_command_result_is_a_command_result_event(server, account):
    cid = account.connection_id
    detail = {"retried": 2, "failed": 0, "newJobIds": ["a", "b"]}
    event = command_result(cid, "cmd-1", action="bulk_retry", detail=detail)
    for types in ("command", None):
        with open_stream(server.url, cid, api_key=account.api_key, types=types) as stream:
            assert stream.status == 200
            assert ingest(server.url, account.api_key, cid, [dict(event)]).status_code == 202
            (received,) = stream.data_events(1)
        assert received.event == c.COMMAND_RESULT == "command:result"
        data = received.json()
        assert data == {
            "commandId": "cmd-1",
            "action": "bulk_retry",
            "status": "done",
            "detail": detail,
            "timestamp": data["timestamp"],
            "connectionId": cid,
        }
        assert list(data) == [
            "commandId",
            "action",
            "status",
            "detail",
            "timestamp",
            "connectionId",
        ]
    # Not a job: the job index has none.
    jobs = requests.get(base(server, cid) + "/jobs", headers=bearer(account.api_key)).json()
    assert jobs["data"] == []


def test_a_bad_command_result_is_rejected(server, account):
    cid = account.connection_id
    too_big = command_result(cid, "c", detail={"e": "x" * c.MAX_COMMAND_DETAIL_BYTES})
    for event in (
        command_result(cid, "c", status="pending"),
        command_result(cid, "x" * (c.MAX_COMMAND_ID + 1)),
        too_big,
    ):
        response = ingest(server.url, account.api_key, cid, [event])
        assert response.status_code == 400, response.text


# -- deleting the connection -------------------------------------------------------------


def test_deleting_the_connection_deletes_its_commands(server, account, redis_client):
    seed(server, account)
    cid = account.connection_id
    session = account.login(server.url)
    assert session.post(f"{base(server, cid)}/jobs/t1/actions", json={"action": "retry"}).ok
    assert redis_client.exists(Keys.commands(cid))
    pattern = f"sluice:{{{cid}}}:command-*"
    assert len(list(redis_client.scan_iter(pattern))) == 2  # the guard and its pending mark
    assert session.delete(base(server, cid)).status_code == 204
    assert not redis_client.exists(Keys.commands(cid))
    assert not list(redis_client.scan_iter(pattern))


@pytest.mark.single_node(reason="reads the node's CLIENT LIST")
def test_a_waiting_read_ends_when_the_server_drains(start_server, account, redis_client):
    """A deploy (SIGTERM) ends a long poll within a step or two, well inside the
    graceful timeout: the agent gets an empty answer and asks again elsewhere."""
    server = start_server()
    (worker_pid,) = server.worker_pids()
    with ThreadPoolExecutor(1) as pool:

        def poll() -> tuple[requests.Response, float]:
            response = read_commands(server, account, wait="25")
            return response, time.monotonic()

        waiting = pool.submit(poll)

        def blocked() -> bool:
            return any(
                client.get("name") == f"sluice-{worker_pid}" and client.get("cmd") == "xread"
                for client in redis_client.client_list()
            )

        wait_until(blocked, what="the long poll reading the command stream")
        started = time.monotonic()
        server.stop()
        answer, answered_at = waiting.result(timeout=30)
    # Within a step (0.5 s) or two of the signal, not the 25 s asked for (with room for
    # a loaded machine).
    assert answered_at - started < 10
    assert answer.status_code == 200 and answer.json()["data"] == []
