"""Property-based fuzzing (Hypothesis) of every HTTP endpoint, against a real Redis.

The JSON endpoints and the pages go through Flask's test client (hundreds of
examples in seconds); the stream endpoint, which never ends, goes through a
real gunicorn+gevent server (`server` fixture) and only its status line,
headers and first bytes are read.

Properties, for every request:

- the status is never >= 500 (503 only if Redis is really down, which it is
  not here) and no body contains "Traceback";
- `/api/*` never answers a 3xx, and every 4xx from it is the JSON error format
  ``{"error": {"code", "message", "details"}}``;
- any redirect stays on the same origin (no open redirect);
- a 202 from `POST /api/ingest` stored only strict JSON (no NaN/Infinity,
  valid UTF-8) and exactly `accepted` entries;
- the stream endpoint rejects event ids that are not Redis stream ids (two
  ASCII decimal uint64 parts), accepts fully valid requests, and never leaves
  the process's stream reader broken (a canary stream keeps receiving).

Inputs: wrong JSON types everywhere, lone surrogates (escaped ``\\ud800`` and
raw invalid UTF-8), deep nesting, NaN/Infinity/1e999, huge numbers and
strings, odd ids, odd headers, random bytes; ingest batches start from valid
events and mutate one field at a time, or are random JSON.

A corpus at the end pins one known input per failure class the fuzzers found
(on 4488922, before the strict parser), checked with the same properties.

Runs are derandomized and use no example database, so CI is reproducible
(SLUICE_FUZZ_SCALE=N runs N times the examples; SLUICE_FUZZ_RANDOM=1 new ones).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode, urljoin, urlsplit

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import sluice.schema as schema_module
from tests.conftest import make_account
from tests.sse import SSEStream, open_stream
from tests.util import job_event, queue_event, raw_redis, worker_event

# -- settings -----------------------------------------------------------------


#: SLUICE_FUZZ_SCALE=10 runs ten times the examples (a deeper local hunt);
#: SLUICE_FUZZ_RANDOM=1 draws new random examples instead of the fixed CI ones.
SCALE = float(os.environ.get("SLUICE_FUZZ_SCALE") or 1)
RANDOM = os.environ.get("SLUICE_FUZZ_RANDOM") == "1"


def fuzz(max_examples: int):
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


ORIGIN = "http://localhost"  # the test client's origin
ERROR_CODE_RE = re.compile(r"^[A-Z][A-Z_]*$")
EVENT_NAMES = {"job:state_change", "worker:heartbeat", "worker:state_change", "queue:snapshot"}
U64 = 2**64 - 1


# -- JSON text with things json.dumps cannot (or will not) write -------------


@dataclass(frozen=True)
class Raw:
    """Literal bytes spliced into a JSON document (e.g. ``1e999``, ``"\\xff"``)."""

    data: bytes
    label: str = ""

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 60 else self.data[:40] + b"..." + self.data[-10:]
        return f"Raw({self.label or shown!r}, {len(self.data)} bytes)"


def deep(opener: str, depth: int) -> Raw:
    """`depth` nested arrays or objects."""
    if opener == "[":
        data = b"[" * depth + b"]" * depth
    else:
        data = b'{"a":' * depth + b"1" + b"}" * depth
    return Raw(data, f"{opener}*{depth}")


def huge_string(n: int) -> Raw:
    return Raw(b'"' + b"x" * n + b'"', f'"x"*{n}')


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes; str with lone surrogates become ``\\udXXX`` escapes when
    `ascii_only`, else raw (invalid UTF-8) surrogate bytes."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        return (
            b"{"
            + b",".join(
                encode(str(k), ascii_only) + b":" + encode(v, ascii_only) for k, v in value.items()
            )
            + b"}"
        )
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(encode(v, ascii_only) for v in value) + b"]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()  # None, bool, int, float (NaN/Infinity as literals)


# -- value strategies ---------------------------------------------------------

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\udc80"]

WRONG_TYPES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.5,
    -0.0,
    [],
    {},
    ["x"],
    [None],
    [[]],
    {"a": "b"},
    {"": None},
    ["job_state_change"],
    {"state": "queued"},
]
NON_FINITE: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    Raw(b"NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"1e999"),
    Raw(b"-1e999"),
    Raw(b"1E400"),
    Raw(b"-0.0e-999"),
    Raw(b"0." + b"0" * 500 + b"1e-999", "tiny float"),
]
BIG_NUMBERS: list[Any] = [
    2**53,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**20,
    1e308,
    Raw(b"1" + b"0" * 400, "10**400"),
    Raw(b"9" * 5000, "5000-digit int"),
    Raw(b"-" + b"9" * 4301, "4301-digit int"),
]
SURROGATE_VALUES: list[Any] = [
    "\ud800",
    "a\udfffb",
    "\udc80",
    "\udbff\udbff",
    {"\ud800": 1},
    ["\udc00"],
    Raw(b'"\\ud800"', "escaped lone high surrogate"),
    Raw(b'"x\\udc00"', "escaped lone low surrogate"),
    Raw(b'"\\udc00\\ud800"', "reversed surrogate pair"),
    Raw(b'"\\uD83D"', "escaped lone surrogate, upper case"),
    Raw(b'"\\ud83d\\ude00"', "escaped valid pair"),
    Raw(b'"\xff"', "raw 0xff"),
    Raw(b'"\xed\xa0\x80"', "raw CESU surrogate"),
    Raw(b'"\xc0\xaf"', "overlong /"),
    Raw(b'"\xf4\x90\x80\x80"', "beyond U+10FFFF"),
]
ODD_STRINGS: list[Any] = [
    "",
    " ",
    "\t\n",
    "\x00",
    "%00",
    "a\x00b",
    "\u0661\u0662\u0663",  # Arabic-Indic 123
    "\uff11\uff12",  # fullwidth 12
    "\u202etxt",
    "\ufeff",
    "\U0001f600",
    "<script>",
    Raw(b'"\\u0000"'),
]
DEEP: list[Any] = [
    deep("[", 33),
    deep("[", 900),
    deep("[", 990),
    deep("[", 2_000),
    deep("[", 10_000),
    deep("{", 10_000),
    deep("[", 100_000),
]
HUGE_STRINGS: list[Any] = [
    huge_string(1024),
    huge_string(100_000),
    huge_string(1_100_000),
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)

surrogate_text = st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=5), st.sampled_from(SURROGATES), st.text(max_size=5)
)

random_json = st.recursive(
    st.one_of(json_scalars, surrogate_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), surrogate_text), children, max_size=4),
    ),
    max_leaves=12,
)

#: A value of the wrong kind, one family at a time (each about equally likely).
weird = st.one_of(
    st.sampled_from(WRONG_TYPES),
    st.sampled_from(NON_FINITE),
    st.one_of(st.sampled_from(BIG_NUMBERS), st.integers()),
    st.one_of(st.sampled_from(SURROGATE_VALUES), surrogate_text),
    st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=30)),
    st.one_of(
        st.sampled_from(DEEP),
        st.integers(900, 1_000).map(lambda d: deep("[" if d % 2 else "{", d)),
    ),
    st.sampled_from(HUGE_STRINGS),
    random_json,
)


VALID_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=latin-1",
    "APPLICATION/JSON",
    "application/json, text/plain",
    "application/jsonx",
    "application/merge-patch+json",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "",
    None,
]


#: Mostly the valid header (so requests get past it), sometimes any of the odd ones.
def mostly(valid: list, odd: list) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(odd))


ORIGINS = [
    ORIGIN,
    ORIGIN,
    None,
    "http://localhost:80",
    "http://LOCALHOST",
    "https://localhost",
    "http://localhost.evil.example",
    "https://evil.example",
    "null",
    "",
    "http://127.0.0.1",
]


# -- the app under test (test client) -------------------------------------------


class ExceptionLog(logging.Handler):
    """Keeps the last exception the app logged, to say *why* a 500 happened."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(record.exc_info[2])
            ours = [
                f for f in frames if "/sluice/" in f.filename and "site-packages" not in f.filename
            ]
            where = " via ".join(
                f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                for f in (
                    frames[-1:] + ours[-1:]
                    if frames and ours and frames[-1] is not ours[-1]
                    else ours[-1:] or frames[-1:]
                )
            )
            self.last = f"{type(exc).__name__}: {str(exc)[:160]} at {where}"


EXC_LOG = ExceptionLog()


@dataclass
class Fuzz:
    app: Any
    app_no_debug: Any
    r: redis.Redis
    account: Any  # tests.conftest.Account
    other: Any

    def client(self, logged_in: bool = False, account: Any = None):
        client = self.app.test_client()
        if logged_in:
            login_client(client, account or self.account)
        return client


def login_client(client, account) -> None:
    """A session for `account` without Argon2 (a session token in Redis, as login does)."""
    from sluice.store.users import start_session

    token = start_session(client.application.extensions["sluice"].redis, account.user_id, 3600)
    with client.session_transaction() as sess:
        sess["_user_id"] = token
        sess["_fresh"] = True


@pytest.fixture(scope="module")
def fz(redis_url):
    from sluice import create_app

    common = {
        "redis_url": redis_url,
        "login_rate_limit": "1000000 per minute",
        "ingest_rate_limit": "1000000 per minute",
    }
    app = create_app(overrides={**common, "debug_stats": True})
    app_no_debug = create_app(overrides=common)
    logger = logging.getLogger("sluice")
    logger.addHandler(EXC_LOG)
    account, other = make_account(redis_url), make_account(redis_url, "Other")
    # One real login through the API, so the session path itself is exercised.
    client = app.test_client()
    response = client.post(
        "/api/auth/login",
        json={"email": account.email, "password": account.password},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 200, response.get_data()
    assert client.get("/api/auth/me").status_code == 200
    r = raw_redis(redis_url)
    yield Fuzz(app, app_no_debug, r, account, other)
    logger.removeHandler(EXC_LOG)
    r.close()


# -- the properties -----------------------------------------------------------


def is_api(path_info: str) -> bool:
    collapsed = re.sub("/{2,}", "/", path_info)
    return collapsed == "/api" or collapsed.startswith("/api/")


def same_origin(location: str, base: str) -> bool:
    """Where a browser would go (WHATWG: tabs/newlines dropped, '\\' is '/')."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip(
        "\x00 \x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"
    )
    cleaned = cleaned.replace("\\", "/")
    target = urlsplit(urljoin(base, cleaned))
    origin = urlsplit(base)
    return (target.scheme, target.netloc.lower()) == (origin.scheme, origin.netloc.lower())


def check_error_body(body: bytes, content_type: str, where: str, head: bool = False) -> dict | None:
    assert content_type.split(";")[0].strip().lower() == "application/json", (
        f"{where}: 4xx with Content-Type {content_type!r}: {body[:200]!r}"
    )
    if head:
        return None
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"{where}: 4xx body is not JSON ({exc}): {body[:200]!r}") from None
    assert isinstance(payload, dict) and set(payload) == {"error"}, f"{where}: {payload!r:.300}"
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, (
        f"{where}: {payload!r:.300}"
    )
    assert isinstance(error["code"], str) and ERROR_CODE_RE.match(error["code"]), (
        f"{where}: {error}"
    )
    assert isinstance(error["message"], str), f"{where}: {error}"
    assert isinstance(error["details"], dict), f"{where}: {error}"
    return error


def check(
    r: redis.Redis,
    status: int,
    body: bytes,
    headers: Any,
    method: str,
    path_info: str,
    *,
    base: str = "http://localhost/",
    note: str = "",
) -> None:
    where = f"{method} {path_info!r}"[:300] + (f" [{note}]" if note else "")
    if status >= 500:
        if status == 503:
            try:
                r.ping()
            except redis.RedisError:
                return  # Redis is really down: 503 is the right answer
        cause = EXC_LOG.last
        EXC_LOG.last = ""
        raise AssertionError(f"{where} -> {status} {body[:200]!r}; logged: {cause or '-'}")
    assert b"Traceback" not in body, f"{where} -> {status}: traceback in body"
    location = headers.get("Location")
    if 300 <= status < 400:
        assert not is_api(path_info), f"{where} -> {status} redirect to {location!r}"
        if location is not None:
            assert same_origin(location, base), f"{where} -> {status} open redirect to {location!r}"
    if is_api(path_info) and 400 <= status < 500:
        check_error_body(
            body, headers.get("Content-Type", ""), f"{where} -> {status}", method == "HEAD"
        )


def send(
    fz: Fuzz,
    client,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    note: str = "",
):
    """One request through the test client, with the raw path (// kept as is)."""
    path_info = unquote_to_bytes(path).decode("latin-1")
    response = client.open(
        "/",
        method=method,
        data=body,
        headers={k: v for k, v in (headers or {}).items() if v is not None},
        environ_overrides={
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "REQUEST_URI": path + ("?" + query if query else ""),
            "RAW_URI": path + ("?" + query if query else ""),
        },
    )
    try:
        event(f"{method if method in METHODS else 'other'} -> {response.status_code}")
    except InvalidArgument:  # outside a Hypothesis test
        pass
    sent = {k: v for k, v in (headers or {}).items() if v is not None}
    described = f"headers={sent!r:.300} body={(body or b'')[:200]!r}" + (
        f"...({len(body)} bytes)" if body and len(body) > 200 else ""
    )
    check(
        fz.r,
        response.status_code,
        response.get_data(),
        response.headers,
        method,
        path_info + ("?" + query if query else ""),
        note=f"{note} {described}".strip(),
    )
    return response


def json_headers(content_type: str | None, origin: str | None, extra: dict | None = None) -> dict:
    headers = {"Origin": origin, **(extra or {})}
    if origin == "https://evil.example":
        headers["Sec-Fetch-Site"] = "cross-site"
    elif origin == "http://localhost.evil.example":
        headers["Sec-Fetch-Site"] = "same-site"
    elif origin == "":
        headers["Sec-Fetch-Site"] = "none"
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


# -- bodies -------------------------------------------------------------------

random_bytes_body = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b" ",
            b"\x00",
            b"\xef\xbb\xbf{}",
            b"{",
            b"}",
            b"[",
            b'{"a":1} trailing',
            b"{}{}",
            b"\xff\xfe{\x00}\x00",
            '{"events":[]}'.encode("utf-16"),
            b"null",
            b"true",
            b"0",
            b'"text"',
            b"NaN",
            b"1e999",
            b"[" * 10_000 + b"]" * 10_000,
            b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            b"[" * 100_000,
            b"{" * 10_000,
            b'{"x": "' + b"y" * 1_100_000 + b'"}',
        ]
    ),
)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws."""
    return st.sampled_from([True] + [False] * (n - 1))


def object_body(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[bytes]:
    """A JSON object with the given fields (each rarely missing) plus maybe an extra key,
    written with escaped (ASCII) or raw (UTF-8, surrogates invalid) strings."""

    @st.composite
    def build(draw):
        obj: dict[str, Any] = {}
        for key, strategy in fields.items():
            if not draw(one_in(10)):
                obj[key] = draw(strategy)
        if draw(one_in(5)):
            obj[draw(st.sampled_from(["extra", "", "\ud800", "__proto__"]))] = draw(weird)
        return encode(obj, ascii_only=not draw(one_in(4)))

    return build()


def body_strategy(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[bytes]:
    """Mostly an object with the endpoint's fields; else anything at all."""

    @st.composite
    def build(draw):
        kind = draw(st.sampled_from(["object"] * 7 + ["bytes", "weird", "json"]))
        if kind == "object":
            return draw(object_body(fields))
        if kind == "bytes":
            return draw(random_bytes_body)
        return encode(draw(weird if kind == "weird" else random_json))

    return build()


# -- auth ----------------------------------------------------------------------


@fuzz(150)
@given(data=st.data())
def test_fuzz_login(fz: Fuzz, data):
    account = fz.account
    # Plausible strings about half the time (each well-formed attempt costs an Argon2 hash).
    email = st.one_of(
        st.sampled_from([account.email, " " + account.email.upper(), "nobody@example.com"]),
        st.emails().map(lambda e: e[:320]),
        weird,
    )
    password = st.one_of(
        st.sampled_from([account.password, "wrong password"]), st.text(min_size=8), weird
    )
    body = data.draw(body_strategy({"email": email, "password": password}), "body")
    headers = json_headers(
        data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
        data.draw(mostly([ORIGIN], ORIGINS), "origin"),
    )
    send(fz, fz.client(), "POST", "/api/auth/login", body=body, headers=headers)


COOKIE_VARIANTS = [
    None,
    "sluice_session=",
    "sluice_session=garbage",
    "sluice_session=eyJfdXNlcl9pZCI6IngifQ.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "sluice_session=" + "a" * 4000,
    "remember_token=x|y",
    "remember_token=" + "%ff" * 10,
    "sluice_session=%00; remember_token=",
    'sluice_session="\\""',
]
AUTH_HEADERS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer sk_live_",
    "Bearer sk_live_nope",
    "bearer sk_live_x",
    "Basic dXNlcjpwYXNz",
    "Bearer sk_live_" + "x" * 300,
    "Bearer  sk_live_x\t",
    "Bearer sk_live_\xe9\xff",
    "Token sk_live_x",
]


@fuzz(100)
@given(data=st.data())
def test_fuzz_session_endpoints(fz: Fuzz, data):
    """GET /api/auth/me, POST /api/auth/logout, GET /api/connections with odd sessions."""
    logged_in = data.draw(st.booleans(), "logged_in")
    client = fz.client(logged_in=logged_in)
    cookie = data.draw(st.sampled_from(COOKIE_VARIANTS), "cookie")
    auth = data.draw(st.sampled_from(AUTH_HEADERS + [f"Bearer {fz.account.api_key}"]), "auth")
    method, path = data.draw(
        st.sampled_from(
            [
                ("GET", "/api/auth/me"),
                ("POST", "/api/auth/logout"),
                ("GET", "/api/connections"),
                ("HEAD", "/api/auth/me"),
                ("OPTIONS", "/api/auth/logout"),
            ]
        ),
        "endpoint",
    )
    headers = {
        "Authorization": auth,
        "Origin": data.draw(mostly([ORIGIN], ORIGINS), "origin"),
        "Content-Type": data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
    }
    if cookie is not None:
        headers["Cookie"] = cookie
    body = data.draw(st.one_of(st.none(), random_bytes_body), "body")
    query = data.draw(st.sampled_from(["", "a=1", "next=//evil.example", "%ff=%00"]), "query")
    send(fz, client, method, path, body=body, headers=headers, query=query)


# -- connections ----------------------------------------------------------------


@fuzz(150)
@given(data=st.data())
def test_fuzz_create_connection(fz: Fuzz, data):
    name = st.one_of(
        st.sampled_from(["Prod", " x ", "x" * 200, "x" * 201]),
        st.text(min_size=1, max_size=40),
        surrogate_text,
        weird,
    )
    framework = st.one_of(
        st.sampled_from(["celery", "bullmq", "sidekiq"]), st.sampled_from(["CELERY", None]), weird
    )
    body = data.draw(body_strategy({"name": name, "framework": framework}), "body")
    headers = json_headers(
        data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
        data.draw(mostly([ORIGIN], ORIGINS), "origin"),
    )
    client = fz.client(logged_in=True)
    response = send(fz, client, "POST", "/api/connections", body=body, headers=headers)
    if response.status_code == 201:
        created = response.get_json()
        # Clean up (and exercise DELETE) so the per-user cap never masks the create path.
        send(
            fz,
            client,
            "DELETE",
            "/api/connections/" + created["id"],
            headers={"Origin": ORIGIN, "Content-Type": "application/json"},
        )


def id_forms(canonical: str) -> list[str]:
    u = uuid.UUID(canonical)
    return [
        canonical,
        canonical.upper(),
        "{" + canonical + "}",
        "urn:uuid:" + canonical,
        u.hex,
        " " + canonical,
        canonical + "%20",
        canonical + "%00",
        canonical.replace("-", "_"),
    ]


ODD_IDS = [
    "",
    "x",
    "0",
    "-1",
    "0-99999999999999999999",
    "99999999999999999999",
    "\u0661\u0662\u0663",
    "%00",
    "%20",
    "%ff",
    "%2F",
    "..",
    "%2e%2e",
    "null",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "0" * 10_000,
    "%F0%9F%98%80",
    "%ED%A0%80",  # a surrogate, percent-encoded
    quote("\u0661" * 32),  # 32 Arabic-Indic digits: int(..., 16) takes them
]


@fuzz(120)
@given(data=st.data())
def test_fuzz_delete_connection(fz: Fuzz, data):
    kind = data.draw(st.sampled_from(["own", "foreign", "random", "odd"]), "kind")
    logged_in = data.draw(st.booleans(), "logged_in")
    client = fz.client(logged_in=logged_in)
    if kind == "own":
        from sluice.store.connections import create_connection

        canonical = create_connection(fz.r, fz.account.user_id, "to delete")["id"]
    elif kind == "foreign":
        canonical = fz.other.connection_id
    else:
        canonical = str(uuid.UUID(int=data.draw(st.integers(0, 2**128 - 1))))
    if kind == "odd":
        raw = data.draw(st.sampled_from(ODD_IDS), "id")
    else:
        raw = data.draw(st.sampled_from(id_forms(canonical)), "id")
    method = data.draw(
        st.sampled_from(["DELETE", "DELETE", "GET", "POST", "PUT", "HEAD"]), "method"
    )
    headers = json_headers(
        data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
        data.draw(mostly([ORIGIN], ORIGINS), "origin"),
    )
    try:
        send(fz, client, method, "/api/connections/" + raw, headers=headers)
    finally:
        if kind == "own":  # not deleted by the request: clean up (the per-user cap is 100)
            from sluice.errors import SluiceError
            from sluice.store.connections import delete_connection

            try:
                delete_connection(fz.r, fz.account.user_id, canonical)
            except SluiceError:
                pass


# -- ingest ------------------------------------------------------------------------

TIMESTAMPS = ["2026-02-27T10:30:00Z", "2026-02-27T10:30:00.123+02:00", "2026-02-27"]


@st.composite
def valid_event(draw, connection_id: str) -> dict:
    kind = draw(
        st.sampled_from(
            ["job_state_change", "worker_heartbeat", "worker_state_change", "queue_snapshot"]
        )
    )
    producer_id = draw(st.one_of(st.none(), st.uuids().map(str)))
    ext = draw(
        st.one_of(
            st.none(),
            st.just({"celery": {"routing_key": "default"}}),
            st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        )
    )
    optional = {}
    if ext is not None:
        optional["extensions"] = ext
    if kind == "job_state_change":
        optional.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "previousState": st.sampled_from(["queued", "active"]),
                        "queue": st.just("default"),
                        "workerId": st.just("celery@w1"),
                        "attempt": st.integers(1, 2**53),
                        "maxRetries": st.integers(0, 10),
                        "progress": st.floats(0.0, 1.0),
                        "error": st.text(max_size=10),
                        "stacktrace": st.text(max_size=10),
                        "createdAt": st.sampled_from(TIMESTAMPS),
                        "startedAt": st.sampled_from(TIMESTAMPS),
                        "finishedAt": st.sampled_from(TIMESTAMPS),
                    },
                )
            )
        )
        event = job_event(
            connection_id,
            draw(st.text(min_size=1, max_size=10)),
            draw(st.sampled_from(["queued", "active", "completed", "failed"])),
            event_id=producer_id,
            name=draw(st.sampled_from(["app.tasks.send_email", "t"])),
            **optional,
        )
    elif kind in ("worker_heartbeat", "worker_state_change"):
        optional.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "hostname": st.sampled_from(["w1", ""]),
                        "previousState": st.sampled_from(["online", "idle"]),
                        "activeJobs": st.integers(0, 100),
                        "concurrency": st.integers(0, 100),
                        "pid": st.integers(0, 2**31),
                        "queues": st.lists(st.sampled_from(["default", "q"]), max_size=3),
                    },
                )
            )
        )
        event = worker_event(
            connection_id,
            draw(st.sampled_from(["celery@w1", "w"])),
            draw(st.sampled_from(["online", "busy", "idle", "offline"])),
            kind=kind,
            event_id=producer_id,
            **optional,
        )
    else:
        optional.update(draw(st.fixed_dictionaries({}, optional={"consumers": st.integers(0, 5)})))
        event = queue_event(
            connection_id,
            draw(st.sampled_from(["default", "q"])),
            draw(st.integers(0, 10**6)),
            event_id=producer_id,
            **optional,
        )
    event["timestamp"] = draw(st.sampled_from([event["timestamp"], *TIMESTAMPS]))
    event["framework"] = draw(st.sampled_from(["celery", "bullmq", "sidekiq"]))
    return event


PAYLOAD_OF = {
    "job_state_change": "job",
    "worker_heartbeat": "worker",
    "worker_state_change": "worker",
    "queue_snapshot": "queue",
}
# The contract's field tables, from the one place that defines them (sorted: a
# stable order for derandomized runs).
PAYLOAD_FIELDS = {
    "job": sorted(f.name for f in schema_module.JOB if f.kind != schema_module.EVENT_TIME),
    "worker": sorted(f.name for f in schema_module.WORKER if f.kind != schema_module.EVENT_TIME),
    "queue": sorted(f.name for f in schema_module.QUEUE if f.kind != schema_module.EVENT_TIME),
}
TOP_FIELDS = ["type", "timestamp", "framework", "connectionId", "id", "job", "worker", "queue"]


@st.composite
def mutated_event(draw, connection_id: str) -> dict:
    """A valid event with exactly one thing changed."""
    event = draw(valid_event(connection_id))
    payload_key = PAYLOAD_OF[event["type"]]
    payload = event[payload_key]
    where = draw(
        st.sampled_from(
            ["top", "payload", "payload", "extensions", "extensions", "queues", "whole"]
        )
    )
    action = draw(st.sampled_from(["set", "set", "set", "delete"]))
    value = draw(weird, "value")
    if where == "whole":
        return value  # the event itself is not an object (or is a random one)
    if where == "top":
        key = draw(st.sampled_from(TOP_FIELDS + ["unknown", "\ud800"]))
        target = event
    elif where == "payload":
        key = draw(st.sampled_from(PAYLOAD_FIELDS[payload_key] + ["unknown", "\ud800"]))
        target = payload
    elif where == "extensions":
        target = payload.setdefault("extensions", {})
        if not isinstance(target, dict):
            target = payload["extensions"] = {}
        key = draw(st.sampled_from(["k", "", "\ud800", "nested"]))
        # Extensions are free-form: what the field checks cannot catch must be caught here.
        value = draw(
            st.one_of(st.sampled_from(NON_FINITE + BIG_NUMBERS + SURROGATE_VALUES), st.just(value))
        )
        if key == "nested":
            value = {"a": [value]}
    else:  # one queue name of a worker (or a `queues` field where none belongs)
        queues = [*payload.get("queues", []), "default"]
        queues[draw(st.integers(0, len(queues) - 1))] = value
        payload["queues"] = queues
        return event
    if action == "delete" and key in target:
        del target[key]
    else:
        target[key] = value
    return event


def ingest_body(connection_id: str) -> st.SearchStrategy[tuple[bytes, int | None]]:
    """(body, number of events in it if it is a {"events": [...]} batch)."""

    @st.composite
    def build(draw):
        kind = draw(st.sampled_from(["batch"] * 7 + ["events", "json", "bytes"]))
        if kind == "events":
            return encode({"events": draw(weird)}), None
        if kind == "json":
            return encode(draw(random_json)), None
        if kind == "bytes":
            return draw(random_bytes_body), None
        events = draw(st.lists(valid_event(connection_id), min_size=0, max_size=3))
        if not draw(one_in(5)):
            events.insert(draw(st.integers(0, len(events))), draw(mutated_event(connection_id)))
        body: dict[str, Any] = {"events": events}
        if draw(one_in(10)):
            body[draw(st.sampled_from(["extra", "events\u0000", "\ud800"]))] = draw(weird)
        return encode(body, ascii_only=not draw(one_in(4))), len(events)

    return build()


def strict_json(text: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text.decode("utf-8"), parse_constant=refuse)


@fuzz(400)
@given(data=st.data())
def test_fuzz_ingest(fz: Fuzz, data):
    cid = fz.account.connection_id
    body, count = data.draw(ingest_body(cid), "body")
    auth = data.draw(
        st.one_of(
            st.just(f"Bearer {fz.account.api_key}"),
            st.just(f"Bearer {fz.account.api_key}"),
            st.just(f"Bearer {fz.account.api_key}"),
            st.just(f"bearer   {fz.account.api_key}\t"),
            st.just(f"Bearer {fz.other.api_key}"),
            st.sampled_from(AUTH_HEADERS),
        ),
        "authorization",
    )
    headers = {
        "Authorization": auth,
        "Content-Type": data.draw(st.sampled_from(CONTENT_TYPES), "content_type"),
        "Origin": data.draw(st.sampled_from([None, ORIGIN, "https://evil.example"]), "origin"),
    }
    post_ingest(fz, body, headers, count)


def post_ingest(fz: Fuzz, body: bytes, headers: dict, count: int | None) -> Any:
    """POST /api/ingest and check the answer; after a 202, check what was stored."""
    key = _stream_key(fz.account.connection_id)
    last = fz.r.xrevrange(key, count=1)
    since = last[0][0].decode() if last else "0-0"
    response = send(fz, fz.client(), "POST", "/api/ingest", body=body, headers=headers)
    if response.status_code == 202:
        reply = response.get_json()
        entries = fz.r.xrange(key, min="(" + since)
        assert set(reply) == {"accepted", "duplicates"}, reply
        assert reply["accepted"] == len(entries), (reply, len(entries))
        if count is not None:
            assert reply["accepted"] + reply["duplicates"] == count, (reply, count)
        for entry_id, fields in entries:
            assert fields[b"t"].decode() in EVENT_NAMES, (entry_id, fields)
            try:
                strict_json(fields[b"d"])
            except ValueError as exc:
                raise AssertionError(
                    f"202 stored non-strict JSON ({exc}): {fields[b'd'][:300]!r}; body {body[:300]!r}"
                ) from None
    return response


def _stream_key(connection_id: str) -> str:
    from sluice.store.keys import Keys

    return Keys.stream(connection_id)


# -- system endpoints and pages ------------------------------------------------------


@fuzz(80)
@given(data=st.data())
def test_fuzz_system_endpoints(fz: Fuzz, data):
    app = data.draw(st.sampled_from(["debug", "default"]), "app")
    client = (fz.app if app == "debug" else fz.app_no_debug).test_client()
    method = data.draw(
        st.sampled_from(["GET", "GET", "HEAD", "POST", "OPTIONS", "DELETE"]), "method"
    )
    path = data.draw(st.sampled_from(["/api/health", "/api/config", "/api/debug/stats"]), "path")
    query = data.draw(
        st.sampled_from(["", "x=1", "%00", "a=%ff&a=b", "verbose=" + "1" * 3000]), "query"
    )
    headers = {
        "Authorization": data.draw(st.sampled_from(AUTH_HEADERS), "auth"),
        "Content-Type": data.draw(st.sampled_from(CONTENT_TYPES), "content_type"),
        "Origin": data.draw(st.sampled_from(ORIGINS), "origin"),
    }
    body = data.draw(st.one_of(st.none(), random_bytes_body), "body")
    send(fz, client, method, path, body=body, headers=headers, query=query)


NEXT_VALUES = [
    "/",
    "/connections",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https://evil.example",
    "http:evil.example",
    "javascript:alert(1)",
    "/\t/evil.example",
    "/%2F/evil.example",
    "/%5Cevil.example",
    "/..//evil.example",
    "/.//evil.example",
    " //evil.example",
    "\x00//evil.example",
    "/\u3000/evil.example",
    "/\uff0f\uff0fevil.example",
    "/a?b=//evil.example#//x",
    '"><x-fuzz>',
    '/"><x-fuzz>',
    "/" + "a" * 3000,
    "",
]


@fuzz(200)
@given(data=st.data())
def test_fuzz_pages(fz: Fuzz, data):
    logged_in = data.draw(st.booleans(), "logged_in")
    client = fz.client(logged_in=logged_in)
    page = data.draw(st.sampled_from(["login", "root", "live", "static"]), "page")
    query = ""
    if page == "login":
        path = "/login"
        nxt = data.draw(st.one_of(st.sampled_from(NEXT_VALUES), st.text(max_size=20)), "next")
        query = data.draw(
            st.sampled_from(
                [urlencode({"next": nxt}), "next=" + quote(nxt, safe="/:\\"), "next=%ff%fe", "next"]
            ),
            "query",
        )
    elif page == "root":
        path = "/"
        query = data.draw(st.sampled_from(["", "x=//evil.example", "%ff"]), "query")
    elif page == "live":
        raw = data.draw(
            st.one_of(
                st.sampled_from(ODD_IDS), st.sampled_from(id_forms(fz.account.connection_id))
            ),
            "id",
        )
        path = "/connections/" + raw
    else:
        path = "/static/" + data.draw(
            st.sampled_from(
                [
                    "app.css",
                    "favicon.svg",
                    "js/api.js",
                    "js/live/stream.js",
                    "js/",
                    "js",
                    "",
                    "../app.py",
                    "..%2fapp.py",
                    "%2e%2e/%2e%2e/wsgi.py",
                    "js/..%5c..%5capp.py",
                    "%00",
                    "app.css%00.js",
                    "a" * 5000,
                    "/etc/passwd",
                    "%ff%fe",
                    "\u0661.js",
                    "app.css/",
                ]
            ),
            "static",
        )
    headers = {
        "Range": data.draw(
            st.sampled_from([None, "bytes=0-0", "bytes=5-2", "bytes=-", "items=1"]), "range"
        ),
        "If-None-Match": data.draw(st.sampled_from([None, "*", '"x"', "\xff"]), "inm"),
        "If-Modified-Since": data.draw(
            st.sampled_from([None, "yesterday", "Thu, 01 Jan 1970 00:00:00 GMT"]), "ims"
        ),
    }
    method = data.draw(st.sampled_from(["GET", "GET", "HEAD", "POST"]), "method")
    response = send(fz, client, method, path, headers=headers, query=query)
    body = response.get_data()
    assert b"<x-fuzz>" not in body, f"{path}?{query}: unescaped markup reflected"


# -- unknown paths and methods ------------------------------------------------------------

SEGMENTS = [
    "api",
    "api",
    "ingest",
    "auth",
    "login",
    "logout",
    "me",
    "connections",
    "events",
    "stream",
    "health",
    "config",
    "debug",
    "stats",
    "static",
    "js",
    "app.css",
    "..",
    ".",
    "",
    "%00",
    "%2F",
    "%2f",
    "%5C",
    "%ff",
    "%C0%AF",
    "%E2%80%AE",
    "%D9%A1%D9%A2%D9%A3",
    "%EF%BC%8F",
    "0-99999999999999999999",
    "00000000-0000-0000-0000-000000000000",
    "a" * 300,
    "~",
    "%",
    "%zz",
    ";",
    "index.html",
    "API",
    "Api",
    "evil.example",
]


@st.composite
def raw_paths(draw) -> str:
    parts = draw(st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=5))
    path = ""
    for part in parts:
        path += draw(st.sampled_from(["/", "/", "/", "//", "///"])) + part
    if draw(st.booleans()):
        path += "/"
    return path if path.startswith("/") else "/" + path


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "FOO"]
KNOWN_PATHS = [
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/me",
    "/api/connections",
    "/api/ingest",
    "/api/health",
    "/api/config",
    "/api/debug/stats",
    "/api//ingest",
    "//api/ingest",
    "/api/ingest/",
    "/api/connections/",
    "/api//connections",
    "/api///auth//me",
    "/api",
    "/api/",
    "//",
    "//evil.example",
    "//evil.example/",
    "///evil.example/%2e%2e",
]


@fuzz(300)
@given(data=st.data())
def test_fuzz_paths_and_methods(fz: Fuzz, data):
    path = data.draw(st.one_of(st.sampled_from(KNOWN_PATHS), raw_paths()), "path")
    method = data.draw(
        st.one_of(st.sampled_from(METHODS), st.sampled_from(["get", "M-SEARCH", "X" * 50])),
        "method",
    )
    logged_in = data.draw(st.booleans(), "logged_in")
    client = fz.client(logged_in=logged_in)
    headers = {
        "Content-Type": data.draw(st.sampled_from(CONTENT_TYPES), "content_type"),
        "Origin": data.draw(st.sampled_from(ORIGINS), "origin"),
        "Authorization": data.draw(
            st.sampled_from(AUTH_HEADERS + [f"Bearer {fz.account.api_key}"]), "auth"
        ),
    }
    body = data.draw(st.one_of(st.none(), random_bytes_body, random_json.map(encode)), "body")
    if "stream" in path and method == "GET":
        path = path.replace(
            "stream", "streams"
        )  # the streaming route is fuzzed over gunicorn below
    send(fz, client, method, path, body=body, headers=headers)


# -- over a real gunicorn+gevent server: the stream, and raw paths --------------------------


def raw_request(
    base_url: str, request: bytes, timeout: float = 5
) -> tuple[int, dict, bytes, socket.socket]:
    """Send raw bytes; return (status, headers, body bytes read so far, socket)."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.sendall(request)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before headers: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        while len(rest) < int(length):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(status_line.split()[1]), headers, rest, sock


class LowerHeaders(dict):
    def get(self, key, default=None):
        return super().get(key.lower(), default)


def server_log_tail(server, n: int = 25) -> str:
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@fuzz(60)
@given(data=st.data())
def test_fuzz_paths_over_gunicorn(fz: Fuzz, server, data):
    path = data.draw(st.one_of(st.sampled_from(KNOWN_PATHS), raw_paths()), "path")
    if "stream" in path:
        path = path.replace("stream", "streams")
    method = data.draw(
        st.sampled_from(["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "FOO"]), "method"
    )
    # Small bodies only: a server may answer (405, 404) without reading a big body and
    # close, and the client then sees a reset instead of the answer (bodies are fuzzed
    # through the test client above).
    body = data.draw(
        st.one_of(st.just(b""), st.binary(max_size=64), random_json.map(encode)), "body"
    )
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    status, headers, rest, sock = raw_request(server.url, request)
    sock.close()
    path_info = unquote_to_bytes(path).decode("latin-1")
    try:
        check(fz.r, status, rest, LowerHeaders(headers), method, path_info, base=server.url + "/")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver log:\n{server_log_tail(server)}") from None


def id_verdict(raw: str | None) -> str:
    """'absent', 'valid' (a Redis stream id), 'invalid', or 'either' (lenient trimming)."""
    if raw is None or raw.strip() == "":
        return "absent"

    def is_id(text: str) -> bool:
        m = re.fullmatch(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", text)
        return bool(m) and int(m.group(1)) <= U64 and int(m.group(2) or 0) <= U64

    if is_id(raw.strip(" \t")):
        return "valid"
    if not is_id(raw.strip()):
        return "invalid"
    return "either"


EVENT_IDS = [
    None,
    "",
    " ",
    "0",
    "0-0",
    "1",
    "1-1",
    "1772187000000-0",
    "18446744073709551615-18446744073709551615",
    "18446744073709551616-0",
    "0-18446744073709551616",
    "0-99999999999999999999",
    "99999999999999999999-0",
    "1-99999999999999999999",
    "99999999999999999999",
    "123456789012345678901",
    "-1",
    "1--1",
    "1-",
    "-",
    "1-2-3",
    "+1",
    "1.5",
    "1e3",
    "0x10",
    "\u0661\u0662\u0663",
    "\u0661\u0662\u0663-\u0660",
    "\uff11",
    " 5-0 ",
    "5-0\n",
    "\u30005-0",
    "%00",
    "\x00",
    "5\x00",
    "$",
    "*",
    ">",
    "+",
    "a" * 600,
]

TYPES = [
    None,
    "",
    " ",
    ",",
    "job",
    "job,worker",
    "queue:snapshot",
    "heartbeat",
    "heartbeat,stream:reset",
    "bogus",
    "job,,worker",
    "JOB",
    "\u0661",
    "%00",
    "j" * 600,
    "job," * 100,
]
VALID_TYPES = {
    None,
    "",
    " ",
    ",",
    "job",
    "job,worker",
    "queue:snapshot",
    "heartbeat",
    "heartbeat,stream:reset",
    "job,,worker",
    "job," * 100,
}


@dataclass
class Canary:
    """An always-open stream on its own connection: proves the process's shared
    reader still delivers after each fuzzed request."""

    server: Any
    account: Any
    r: redis.Redis
    stream: Any = None
    seq: int = 0

    def open(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = open_stream(
            self.server.url, self.account.connection_id, api_key=self.account.api_key
        )
        assert self.stream.status == 200

    def roundtrip(self, timeout: float) -> bool:
        from sluice.store.keys import Keys

        self.seq += 1
        marker = {"canary": self.seq}
        # What the append script does: the entry, then its notification.
        key = _stream_key(self.account.connection_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(key, {"t": "queue:snapshot", "d": json.dumps(marker)})
        pipe.spublish(Keys.notify(self.account.connection_id), key)
        pipe.execute()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                event = self.stream.data_events(1, timeout=max(0.01, deadline - time.monotonic()))[
                    0
                ]
                if event.json() == marker:
                    return True
        except (TimeoutError, ConnectionError, OSError):
            pass
        return False

    def recover(self, timeout: float = 15) -> None:
        """Wait (not assert) until the reader delivers again: an earlier failing
        example must not be blamed on the next one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.stream is None or self.stream.ended:
                    self.open()
                if self.roundtrip(2):
                    return
            except (OSError, ConnectionError, AssertionError):
                time.sleep(0.2)
            self.open()
        raise AssertionError("the stream reader stayed broken for 15 s")


@pytest.fixture(scope="module")
def stream_env(server, redis_url):
    account, other, canary_account = (make_account(redis_url, n) for n in ("A", "B", "canary"))
    # History, so that ids before the first entry take the "history trimmed" path.
    r = raw_redis(redis_url)
    for i in range(3):
        r.xadd(
            _stream_key(account.connection_id), {"t": "queue:snapshot", "d": json.dumps({"i": i})}
        )
    session = account.login(server.url)
    cookie = "sluice_session=" + session.cookies["sluice_session"]
    canary = Canary(server, canary_account, r)
    canary.open()
    assert canary.roundtrip(5), "the canary stream does not work before fuzzing"
    yield account, other, cookie, canary
    canary.stream.close()
    r.close()


@fuzz(60)
@given(data=st.data())
def test_fuzz_stream(fz: Fuzz, server, stream_env, data):
    account, other, cookie, canary = stream_env
    canary.recover()
    auth = data.draw(
        st.sampled_from(
            ["key", "key", "cookie", "cookie", "none", "bad_key", "other_key", "key_spaces"]
        ),
        "auth",
    )
    cid_kind = data.draw(
        st.sampled_from(
            ["own", "own", "own", "own_upper", "own_braces", "foreign", "random", "odd", "missing"]
        ),
        "cid_kind",
    )
    if cid_kind == "own":
        cid = account.connection_id
    elif cid_kind == "own_upper":
        cid = account.connection_id.upper()
    elif cid_kind == "own_braces":
        cid = "{" + account.connection_id + "}"
    elif cid_kind == "foreign":
        cid = other.connection_id
    elif cid_kind == "random":
        cid = str(uuid.uuid4())
    elif cid_kind == "odd":
        # (no 10,000-character id: gunicorn answers a request line over 4094 bytes itself)
        odd = [i for i in ODD_IDS if len(i) < 1000]
        cid = unquote_to_bytes(data.draw(st.sampled_from(odd), "odd_id")).decode("utf-8", "replace")
    else:
        cid = None
    types = data.draw(st.sampled_from(TYPES), "types")
    header_id = data.draw(st.sampled_from(EVENT_IDS), "Last-Event-ID")
    query_id = data.draw(st.sampled_from(EVENT_IDS), "lastEventId")
    params = []
    if cid is not None:
        params.append(("connectionId", cid))
    if types is not None:
        params.append(("types", types))
    if query_id is not None:
        params.append(("lastEventId", query_id))
    lines = [
        f"GET /api/events/stream?{urlencode(params)} HTTP/1.1",
        f"Host: {urlsplit(server.url).netloc}",
        "Accept: text/event-stream",
    ]
    if auth == "key":
        lines.append(f"Authorization: Bearer {account.api_key}")
    elif auth == "key_spaces":
        lines.append(f"Authorization: bearer   {account.api_key}  ")
    elif auth == "bad_key":
        lines.append("Authorization: Bearer sk_live_nope")
    elif auth == "other_key":
        lines.append(f"Authorization: Bearer {other.api_key}")
    elif auth == "cookie":
        lines.append("Cookie: " + cookie)
    # Header values go out as latin-1 bytes (what a browser would send is ASCII).
    header_bytes = b""
    if header_id is not None:
        header_bytes = (
            b"Last-Event-ID: "
            + header_id.encode("utf-8").replace(b"\n", b"").replace(b"\x00", b"")
            + b"\r\n"
        )
    request = ("\r\n".join(lines) + "\r\n").encode() + header_bytes + b"\r\n"
    note = f"auth={auth} connectionId={cid!r:.80} types={types!r:.60} Last-Event-ID={header_id!r:.60} lastEventId={query_id!r:.60}"
    status, headers, rest, sock = raw_request(server.url, request)
    try:
        try:
            check(
                fz.r,
                status,
                rest[: int(headers.get("content-length", len(rest)))],
                LowerHeaders(headers),
                "GET",
                "/api/events/stream",
                base=server.url + "/",
                note=note,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nserver log:\n{server_log_tail(server)}") from None
        # What the server sees: gunicorn strips header values; a non-blank header wins.
        sent_header = None
        if header_id is not None:
            sent_header = (
                header_id.replace("\n", "")
                .replace("\x00", "")
                .encode("utf-8")
                .decode("latin-1")
                .strip(" \t")
            )
        effective = sent_header if sent_header else query_id
        verdict = id_verdict(effective)
        if verdict == "invalid":
            assert status != 200, f"a malformed event id was accepted: {note}"
        auth_ok = auth in ("key", "cookie", "key_spaces")
        if (
            auth_ok
            and cid_kind in ("own", "own_upper")
            and types in VALID_TYPES
            and verdict in ("absent", "valid")
        ):
            assert status == 200, f"a valid stream request got {status} {rest[:300]!r}: {note}"
        if status == 200:
            assert headers.get("content-type", "").startswith("text/event-stream"), headers
            stream = _as_stream(sock, headers, rest)
            first = stream.read_bytes(7, timeout=3)
            assert first.startswith(b"retry: "), first
            # The reader of this process must still deliver to everyone else.
            assert canary.roundtrip(3), (
                f"the stream reader stopped delivering after: {note}\nserver log:\n{server_log_tail(server)}"
            )
    finally:
        sock.close()


def _as_stream(sock, headers, rest):
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    return SSEStream(sock, 200, headers, rest, chunked)


# -- a corpus: one known nasty input per failure class the fuzzers found -------------------
# (the same properties, checked on fixed inputs, so each class is pinned by name)


def _event_with(fz: Fuzz, change: dict | None = None, **job_fields) -> dict:
    event = job_event(fz.account.connection_id, "corpus", "queued", **job_fields)
    event.update(change or {})
    return event


def _batch(*events) -> bytes:
    return encode({"events": list(events)})


CORPUS: dict[str, Any] = {
    # POST /api/auth/login
    "login: escaped lone surrogate in email": lambda fz: (
        "/api/auth/login",
        encode({"email": "\ud800@example.com", "password": "12345678"}),
    ),
    "login: raw CESU-8 surrogate bytes in email": lambda fz: (
        "/api/auth/login",
        b'{"email":"\xed\xa0\x80@example.com","password":"12345678"}',
    ),
    "login: lone surrogate in password": lambda fz: (
        "/api/auth/login",
        encode({"email": fz.account.email, "password": "\udfff" * 8}),
    ),
    "login: 10,000 nested arrays": lambda fz: ("/api/auth/login", deep("[", 10_000).data),
    "login: NaN password": lambda fz: ("/api/auth/login", b'{"email":"a@b.co","password":NaN}'),
    # POST /api/connections
    "connections: lone surrogate in name": lambda fz: (
        "/api/connections",
        encode({"name": "\ud800"}),
    ),
    "connections: 10,000 nested objects": lambda fz: ("/api/connections", deep("{", 10_000).data),
    "connections: name of 10,000 nested arrays": lambda fz: (
        "/api/connections",
        encode({"name": deep("[", 10_000)}),
    ),
    # POST /api/ingest
    "ingest: type is a list": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, {"type": ["job_state_change"]})),
    ),
    "ingest: type is an object": lambda fz: ("/api/ingest", _batch(_event_with(fz, {"type": {}}))),
    "ingest: lone surrogate in externalId": lambda fz: (
        "/api/ingest",
        _batch(job_event(fz.account.connection_id, "\ud800", "queued")),
    ),
    "ingest: lone surrogate in job name": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, name="\udc00")),
    ),
    "ingest: lone surrogate in an extension": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, extensions={"k": "\ud800"})),
    ),
    "ingest: lone surrogate in an unknown field's name": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, {"\udc00": 1})),
    ),
    "ingest: lone surrogate in a worker queue name": lambda fz: (
        "/api/ingest",
        _batch(worker_event(fz.account.connection_id, "w", "busy", queues=["\ud800"])),
    ),
    "ingest: NaN in extensions": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, extensions={"k": Raw(b"NaN")})),
    ),
    "ingest: 1e999 in extensions": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, extensions={"k": Raw(b"1e999")})),
    ),
    "ingest: -Infinity deep in extensions": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, extensions={"a": [{"b": Raw(b"-Infinity")}]})),
    ),
    "ingest: 10,000 nested arrays": lambda fz: ("/api/ingest", deep("[", 10_000).data),
    "ingest: 10,000 nested arrays as an extension": lambda fz: (
        "/api/ingest",
        _batch(_event_with(fz, extensions={"k": deep("[", 10_000)})),
    ),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_corpus(fz: Fuzz, case):
    path, body = CORPUS[case](fz)
    if path == "/api/ingest":
        headers = {"Authorization": f"Bearer {fz.account.api_key}"}
        post_ingest(fz, body, headers, None)
    else:
        client = fz.client(logged_in=path == "/api/connections")
        send(fz, client, "POST", path, body=body, headers=json_headers("application/json", ORIGIN))


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/api//ingest"), ("GET", "/api//connections"), ("GET", "/api///auth//me")],
)
def test_corpus_doubled_slashes(fz: Fuzz, method, path):
    send(
        fz, fz.client(), method, path, body=b"{}", headers=json_headers("application/json", ORIGIN)
    )


@pytest.mark.parametrize(
    "event_id",
    [
        "0-99999999999999999999",  # seq > 2^64-1, before the first entry: XREAD then fails
        "1-18446744073709551616",
        "18446744073709551616-0",
        "99999999999999999999",
        "\u0661\u0662\u0663",  # Arabic-Indic digits (query only: headers are latin-1)
    ],
)
@pytest.mark.parametrize("where", ["header", "query"])
def test_corpus_stream_event_ids(server, stream_env, event_id, where):
    """Ids that are not Redis stream ids are a 400, and never stall the process's
    reader (checked with the canary stream while the request is open)."""
    account, _, _, canary = stream_env
    canary.recover()
    if where == "header" and not event_id.isascii():
        pytest.skip("a header carries latin-1 bytes")
    stream = open_stream(
        server.url,
        account.connection_id,
        api_key=account.api_key,
        last_event_id=event_id if where == "header" else None,
        query_last_event_id=event_id if where == "query" else None,
    )
    try:
        delivered = canary.roundtrip(3)
        problems = []
        if stream.status != 400:
            problems.append(f"{where} {event_id!r} -> {stream.status}, not 400")
        if not delivered:
            problems.append("the process's stream reader stopped delivering to other streams")
        assert not problems, "; ".join(problems)
    finally:
        stream.close()
