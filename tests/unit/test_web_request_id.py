"""sluice/web/request_id.py: X-Request-ID in and out, over a bare WSGI app and over the
real app with no Redis running (errors, every one of them, carry the id)."""

from __future__ import annotations

import re

import pytest
from werkzeug.test import Client

from sluice.logs import ENVIRON_KEY, REQUEST_ID
from sluice.web.app import create_app
from sluice.web.request_id import RequestIdMiddleware

HEX32 = re.compile(r"[0-9a-f]{32}")


def bare_app(seen: list):
    def app(environ, start_response):
        seen.append((environ[ENVIRON_KEY], REQUEST_ID.get()))
        start_response("200 OK", [("Content-Type", "text/plain"), ("x-request-id", "app's own")])
        return [b"ok"]

    return app


@pytest.fixture(autouse=True)
def no_request_id():
    token = REQUEST_ID.set(None)
    yield
    REQUEST_ID.reset(token)


def test_a_sane_id_round_trips_and_is_the_log_context():
    seen: list = []
    client = Client(RequestIdMiddleware(bare_app(seen)))
    response = client.get("/", headers={"X-Request-ID": "abc-123.x_Y"})
    assert response.headers.getlist("X-Request-ID") == ["abc-123.x_Y"], "the app's own replaced"
    assert seen == [("abc-123.x_Y", "abc-123.x_Y")]


@pytest.mark.parametrize("header", [None, "", "a" * 129, "<script>", 'x"}{"level":"error'])
def test_a_missing_or_hostile_id_is_replaced_by_a_new_one(header):
    seen: list = []
    client = Client(RequestIdMiddleware(bare_app(seen)))
    headers = {} if header is None else {"X-Request-ID": header}
    response = client.get("/", headers=headers)
    sent = response.headers["X-Request-ID"]
    assert HEX32.fullmatch(sent) and sent != header
    assert seen == [(sent, sent)]


def test_each_request_gets_its_own_id():
    seen: list = []
    client = Client(RequestIdMiddleware(bare_app(seen)))
    ids = {client.get("/").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20


# -- the real app, no Redis ------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    app = create_app(overrides={"redis_url": "redis://127.0.0.1:1/0", "secret_key": "x" * 32})

    def boom():
        raise RuntimeError("boom")

    app.add_url_rule("/test/boom", view_func=boom)
    return app.test_client()


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/api/no-such-thing", 404),
        ("DELETE", "/api/health", 405),
        ("GET", "/api/events/stream?connectionId=x", 401),
        ("GET", "/api/health", 503),  # Redis is down
        ("POST", "/api/ingest", 503),  # the rate limit is counted in Redis
        ("GET", "/test/boom", 500),
        ("GET", "/login", 200),
    ],
)
def test_every_response_of_the_app_carries_the_id(client, method, path, status):
    response = client.open(path, method=method, headers={"X-Request-ID": "given-1"})
    assert response.status_code == status, response.data
    assert response.headers.getlist("X-Request-ID") == ["given-1"]
    response = client.open(path, method=method)
    assert HEX32.fullmatch(response.headers["X-Request-ID"])
