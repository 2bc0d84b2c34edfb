"""Domain errors -> HTTP, and the error format, through Flask's test client with no
Redis running (port 1: nothing listens, so every Redis call fails at once)."""

from __future__ import annotations

import io
import json
import time

import gevent
import pytest

from sluice import contract
from sluice.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    SluiceError,
    TooLarge,
    TooMany,
    TooSlow,
    Unauthorized,
    Unavailable,
)
from sluice.fanout.hub import Draining, TooManyStreams
from sluice.web.app import create_app
from sluice.web.errors import STATUS, error_body, status_of
from sluice.web.extensions import limiter

MAX_BODY = 1024
DOMAIN_ERRORS = {
    "Invalid": (Invalid, 400, "VALIDATION_ERROR"),
    "Unauthorized": (Unauthorized, 401, "UNAUTHORIZED"),
    "Forbidden": (Forbidden, 403, "FORBIDDEN"),
    "NotFound": (NotFound, 404, "NOT_FOUND"),
    "TooSlow": (TooSlow, 408, "REQUEST_TIMEOUT"),
    "Conflict": (Conflict, 409, "CONFLICT"),
    "TooLarge": (TooLarge, 413, "PAYLOAD_TOO_LARGE"),
    "TooMany": (TooMany, 429, "RATE_LIMITED"),
    "Unavailable": (Unavailable, 503, "UNAVAILABLE"),
}


@pytest.fixture(scope="module")
def app():
    started = time.monotonic()
    app = create_app(
        overrides={
            "redis_url": "redis://127.0.0.1:1/0",
            "secret_key": "x" * 32,
            "max_body_bytes": MAX_BODY,
            "body_read_seconds": 0.05,
        }
    )
    assert time.monotonic() - started < 3  # no waiting on the unreachable Redis

    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    def raise_domain(name):
        cls = DOMAIN_ERRORS[name][0]
        raise cls(
            f"{name} happened", {"field": "why"}, retry_after=7 if name == "TooMany" else None
        )

    app.add_url_rule("/test/boom", view_func=boom)
    app.add_url_rule("/test/raise/<name>", view_func=raise_domain)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def no_limits(monkeypatch):
    """Rate limits live in Redis; without them a request reaches its view."""
    monkeypatch.setattr(limiter, "enabled", False)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = json.loads(response.data)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == contract.ERROR_CODES[status]
    assert b"Traceback" not in response.data and b'File "' not in response.data
    return body["error"]


def assert_store_unavailable(response) -> None:
    error = error_of(response, 503)
    assert error["message"] == "The event store is unavailable; retry shortly"
    assert response.headers["Retry-After"] == "2"


# -- the table ------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOMAIN_ERRORS)
def test_every_domain_error_has_its_status_and_code(name):
    cls, status, code = DOMAIN_ERRORS[name]
    assert STATUS[cls] == status
    assert status_of(cls("m")) == status
    assert contract.ERROR_CODES[status] == code


def test_the_table_covers_every_domain_error():
    assert set(STATUS) == {cls for cls, _, _ in DOMAIN_ERRORS.values()}
    assert set(SluiceError.__subclasses__()) == set(STATUS)


def test_subclasses_take_their_nearest_mapped_class():
    assert status_of(Draining()) == 503
    assert status_of(TooManyStreams()) == 429

    class Odd(SluiceError):
        pass

    class Narrower(Invalid):
        pass

    assert status_of(Odd("x")) == 500
    assert status_of(SluiceError("x")) == 500
    assert status_of(Narrower("x")) == 400


def test_error_body_bytes():
    assert error_body("NOT_FOUND", "Not found") == (
        b'{"error":{"code":"NOT_FOUND","message":"Not found","details":{}}}'
    )
    assert (
        error_body("VALIDATION_ERROR", "Bad", {"b": "2", "a": "é"})
        == (
            '{"error":{"code":"VALIDATION_ERROR","message":"Bad","details":{"b":"2","a":"é"}}}'
        ).encode()
    )
    # A lone surrogate echoed from a client never makes the error itself fail.
    assert error_body("X", "a\ud800b") == b'{"error":{"code":"X","message":"a?b","details":{}}}'


def test_domain_error_str():
    assert str(Invalid("Bad")) == "Bad"
    assert str(Invalid("Bad", {"a": "x", "b": "y"})) == "Bad (a: x; b: y)"
    assert Invalid("Bad").details == {} and Invalid("Bad").retry_after is None


# -- through the app ----------------------------------------------------------------------


@pytest.mark.parametrize("name", DOMAIN_ERRORS)
def test_domain_errors_through_the_app(client, name):
    _, status, _ = DOMAIN_ERRORS[name]
    response = client.get(f"/test/raise/{name}")
    error = error_of(response, status)
    assert error == {
        "code": contract.ERROR_CODES[status],
        "message": f"{name} happened",
        "details": {"field": "why"},
    }
    if name == "TooMany":
        assert response.headers["Retry-After"] == "7"
    else:
        assert "Retry-After" not in response.headers


def test_unknown_path_is_a_json_404(client):
    response = client.get("/no/such/page")
    assert response.data == b'{"error":{"code":"NOT_FOUND","message":"Not found","details":{}}}'
    error_of(response, 404)
    error_of(client.get("/api//ingest"), 404)  # no slash merging, no redirect


def test_wrong_method_is_405_with_allow(client):
    response = client.post("/api/health")
    assert error_of(response, 405)["message"] == "Method not allowed"
    assert "GET" in response.headers["Allow"].split(", ")
    response = client.get("/api/ingest")
    error_of(response, 405)
    assert sorted(response.headers["Allow"].split(", ")) == ["OPTIONS", "POST"]


def test_an_unexpected_error_is_a_500_without_internals(client):
    response = client.get("/test/boom")
    error = error_of(response, 500)
    assert error == {"code": "INTERNAL_ERROR", "message": "Internal server error", "details": {}}
    assert b"secret" not in response.data and b"RuntimeError" not in response.data


def test_security_headers_on_errors(client):
    response = client.get("/nope")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in response.headers  # not production


# -- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer sk_test_abc", "sk_live_abc", "Bearer  "]
)
def test_ingest_with_a_malformed_authorization_is_401(client, header):
    response = client.post("/api/ingest", headers={"Authorization": header}, data=b"{}")
    error = error_of(response, 401)
    assert error["message"] == "Authorization must be 'Bearer sk_live_…'"


def test_ingest_without_authorization_is_401(client, no_limits):
    error = error_of(client.post("/api/ingest", data=b"{}"), 401)
    assert error["message"] == "Send 'Authorization: Bearer sk_live_…'"


def test_ingest_rate_limit_needs_the_store(client):
    # With the limiter on, even an anonymous ingest asks Redis first: 503, not 401.
    assert_store_unavailable(client.post("/api/ingest", data=b"{}"))


def test_ingest_checks_the_key_before_the_body(client, no_limits):
    # A well-formed key is looked up in Redis before the body is read: 503, never 400.
    response = client.post(
        "/api/ingest",
        headers={"Authorization": "Bearer sk_live_" + "a" * 43},
        data=b"{not json",
        content_type="application/json",
    )
    assert_store_unavailable(response)


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/auth/me"),
        ("get", "/api/connections"),
        ("post", "/api/connections"),
        ("delete", "/api/connections/0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e"),
        ("get", "/api/events/stream?connectionId=0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e"),
    ],
)
def test_signed_out_is_401_json_not_a_redirect(client, method, path):
    response = getattr(client, method)(path, json={})
    assert "Location" not in response.headers
    error_of(response, 401)


def test_stream_with_a_malformed_key_is_401_before_any_400(client):
    response = client.get(
        "/api/events/stream?connectionId=nope&types=bogus", headers={"Authorization": "Bearer x"}
    )
    error_of(response, 401)


# -- request bodies (login: its body is read before Redis is asked) -------------------------


def login(client, data, content_type="application/json", **kwargs):
    return client.post("/api/auth/login", data=data, content_type=content_type, **kwargs)


@pytest.mark.parametrize(
    "data, details",
    [
        (b"{not json", None),
        (b'{"email": NaN}', {"body": "NaN is not valid JSON (RFC 8259)"}),
        (b"\xef\xbb\xbf{}", {"body": "a byte order mark is not allowed"}),
        (b"", {"body": "empty"}),
        (b"[1, 2]", {"body": "not an object"}),
    ],
)
def test_malformed_json_is_400(client, no_limits, data, details):
    error = error_of(login(client, data), 400)
    assert set(error["details"]) == {"body"}
    if details is not None:
        assert error["details"] == details
    if data.startswith(b"{not"):
        assert error["message"] == "Request body is not valid JSON"


def test_login_needs_a_json_content_type(client, no_limits):
    error = error_of(login(client, b"email=a", "application/x-www-form-urlencoded"), 400)
    assert error["details"] == {"Content-Type": "application/x-www-form-urlencoded"}


def test_login_fields_are_required(client, no_limits):
    error = error_of(login(client, b'{"email": 1}'), 400)
    assert error["details"] == {"email": "required string", "password": "required string"}


def test_body_too_large_is_413(client, no_limits):
    body = json.dumps({"email": "a@b.c", "password": "p" * MAX_BODY}).encode()
    error = error_of(login(client, body), 413)
    assert error["message"] == "Request body is too large"


class SlowBody(io.BytesIO):
    """A client that announces a body and then does not send it."""

    def read(self, *args) -> bytes:
        gevent.sleep(30)  # cut short by the body read timeout
        return b""

    readinto = read1 = readline = read


def test_a_body_that_does_not_arrive_is_408(client, no_limits):
    started = time.monotonic()
    response = client.post(
        "/api/auth/login",
        input_stream=SlowBody(b"x" * 100),
        content_type="application/json",
    )
    error = error_of(response, 408)
    assert error["message"] == "The request body did not arrive within 0.05 s"
    assert time.monotonic() - started < 2


def test_a_request_needing_the_store_is_503_with_retry_after(client):
    started = time.monotonic()
    assert_store_unavailable(login(client, b'{"email": "a@b.c", "password": "pw"}'))
    assert_store_unavailable(login(client, b"{not json"))  # the limiter asks first
    assert time.monotonic() - started < 2


def test_health_is_503_when_the_store_is_down(client):
    response = client.get("/api/health")
    assert error_of(response, 503)["message"] == "Redis is unreachable"
    assert response.headers["Retry-After"] == "2"


def test_config_needs_no_store(client):
    response = client.get("/api/config")
    assert response.status_code == 200
    assert response.get_json() == {
        "heartbeatSeconds": 15.0,
        "workerExpirySeconds": 30.0,
        "readOnly": False,
    }


# -- cross-site writes -------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_cross_site_write_is_403(client, site):
    response = login(client, b"{}", headers={"Sec-Fetch-Site": site})
    error = error_of(response, 403)
    assert error["details"] == {"Sec-Fetch-Site": site}


def test_a_foreign_origin_is_403_without_sec_fetch_site(client):
    response = login(client, b"{}", headers={"Origin": "https://evil.example"})
    assert error_of(response, 403)["details"] == {"Origin": "https://evil.example"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "http://localhost"},
        {"Origin": "http://localhost:80"},
        {},  # not a browser
    ],
)
def test_same_site_writes_pass_the_check(client, headers):
    # They get as far as the store (down here): 503, not 403.
    assert_store_unavailable(login(client, b"{}", headers=headers))


def test_an_api_key_write_is_not_checked_for_site(client):
    response = client.post(
        "/api/ingest",
        headers={"Sec-Fetch-Site": "cross-site", "Authorization": "Basic x"},
        data=b"{}",
    )
    error_of(response, 401)
