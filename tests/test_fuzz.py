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
  the process's stream reader broken (a canary stream keeps receiving);
- the job index's reads (`/api/connections/<id>/jobs`, `…/jobs/<job>`,
  `…/workers`, `…/queues`) answer only 200/400/401/404 as docs/api.md says
  (405 for other methods): 401 before 400, a 400 names exactly the bad
  parameters, a page's jobs pass its filters and, on a connection whose jobs
  are known, are exactly the next ones; and after random valid events, every
  job, worker and queue in the index is what the stream's latest event of it
  says (detail, timeline, arguments, list order and filters, snapshots).

Inputs: wrong JSON types everywhere, lone surrogates (escaped ``\\ud800`` and
raw invalid UTF-8), deep nesting, NaN/Infinity/1e999, huge numbers and
strings, odd ids, odd headers, random bytes; ingest batches start from valid
events and mutate one field at a time, or are random JSON. Query parameters
are strings, so there: percent-encoded surrogates and invalid UTF-8, NUL,
non-ASCII digits, signs, float forms, values on each side of every bound,
100,000 characters, repeated and bare parameters.

A corpus at the end pins one known input per failure class the fuzzers found
(on 4488922, before the strict parser), checked with the same properties, and
the job index's odd inputs (one known bug there is an xfail(strict=True)).

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
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode, urljoin, urlsplit

import pytest
import redis
import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" error handler
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import sluice.schema as schema_module
from sluice import contract
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
EVENT_NAMES = set(contract.EVENT_NAMES)
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
        "actions_rate_limit": "1000000 per minute",
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
    # No server traceback reaches a client. A job's detail may hold the traceback
    # its producer sent (`traceback`), which is data, not a leak: look elsewhere.
    shown = body
    if status == 200 and b'"traceback":' in body:
        try:
            data = json.loads(body).get("data")
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("traceback"), str):
            shown = json.dumps({**data, "traceback": ""}).encode()
    assert b"Traceback" not in shown, f"{where} -> {status}: traceback in body"
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


# -- keys: rotate, add, list, revoke; what a key is -------------------------------------


@pytest.fixture(scope="module")
def keys_account(redis_url):
    """An account of its own: rotating its key must not change `fz.account`'s."""
    return make_account(redis_url, "Keys")


@fuzz(150)
@given(data=st.data())
def test_fuzz_keys_endpoints(fz: Fuzz, keys_account, data):
    """POST …/rotate-key, GET/POST …/keys, DELETE …/keys/<key id> with hostile ids,
    bodies, headers and sessions: 4xx or the documented success, never a 500."""
    kind = data.draw(st.sampled_from(["own", "own", "foreign", "random", "odd"]), "kind")
    if kind == "own":
        canonical = keys_account.connection_id
    elif kind == "foreign":
        canonical = fz.other.connection_id
    else:
        canonical = str(uuid.UUID(int=data.draw(st.integers(0, 2**128 - 1))))
    if kind == "odd":
        raw = data.draw(st.sampled_from(ODD_IDS), "id")
    else:
        raw = data.draw(mostly([canonical], id_forms(canonical)), "id")
    key_id = data.draw(
        st.one_of(
            st.sampled_from(["ingest", str(uuid.uuid4()), "x" * 10_000, "%ED%A0%80", "%00"]),
            st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=122), max_size=80),
        ),
        "key_id",
    )
    method, tail = data.draw(
        st.sampled_from(
            [
                ("POST", "/rotate-key"),
                ("POST", "/keys"),
                ("POST", "/keys"),
                ("GET", "/keys"),
                ("DELETE", "/keys/" + quote(key_id, safe="%")),
                ("GET", "/rotate-key"),
                ("PUT", "/keys"),
            ]
        ),
        "endpoint",
    )
    scope = st.one_of(st.sampled_from(["read", "write", "READ", "", None]), surrogate_text, weird)
    body = data.draw(body_strategy({"scope": scope}), "body")
    headers = json_headers(
        data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
        data.draw(mostly([ORIGIN], ORIGINS), "origin"),
    )
    logged_in = data.draw(mostly([True], [False]), "logged_in")
    client = fz.client(logged_in=logged_in, account=keys_account)
    path = f"/api/connections/{raw}{tail}"
    response = send(fz, client, method, path, body=body, headers=headers)
    if response.status_code == 201:
        created = response.get_json()
        assert set(created) == {"id", "apiKey", "scope", "prefix", "createdAt"}
        assert created["scope"] == "read"
        # Revoke it again so the per-connection cap never masks the create path.
        gone = send(
            fz,
            client,
            "DELETE",
            f"/api/connections/{canonical}/keys/{created['id']}",
            headers={"Origin": ORIGIN, "Content-Type": "application/json"},
        )
        assert gone.status_code == 204
    elif response.status_code == 200 and method == "POST":
        assert set(response.get_json()) == {"apiKey"}
    elif response.status_code == 200:
        assert all("apiKey" not in k for k in response.get_json()["data"])


@fuzz(80)
@given(data=st.data())
def test_fuzz_get_key(fz: Fuzz, data):
    """GET /api/key with odd `Authorization` headers: 200 only for a real key, else 401."""
    auth = data.draw(
        st.one_of(
            st.sampled_from(AUTH_HEADERS + [f"Bearer {fz.account.api_key}", None]),
            st.text(
                alphabet=st.characters(
                    min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"
                ),
                max_size=300,
            ).map(lambda t: "Bearer sk_live_" + t),
        ),
        "auth",
    )
    headers = {} if auth is None else {"Authorization": auth}
    method = data.draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]), "method")
    response = send(fz, fz.client(), method, "/api/key", headers=headers)
    if response.status_code == 200 and method == "GET":
        assert response.get_json()["connectionId"] == fz.account.connection_id


# -- operator actions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def actions_account(fz, redis_url):
    """An account of its own with one failed job `t1` and one worker `w1@host`."""
    account = make_account(redis_url, "Actions")
    cid = account.connection_id
    events = [
        job_event(cid, "t1", "failed", queue="celery"),
        worker_event(cid, "w1@host", "online"),
    ]
    response = fz.client().post(
        "/api/ingest",
        json={"events": events},
        headers={"Authorization": f"Bearer {account.api_key}"},
    )
    assert response.status_code == 202, response.get_data()
    return account


ACTION_NAMES = [*contract.COMMAND_ACTIONS, "REVOKE", "", "reboot"]


@fuzz(200)
@given(data=st.data())
def test_fuzz_action_endpoints(fz: Fuzz, actions_account, data):
    """POST …/jobs/<ref>/actions, …/jobs/actions, …/workers/<ref>/actions and GET
    …/commands with hostile ids, bodies, headers and credentials: 202 with a
    command id (200 with commands) or a 4xx, never a 500."""
    account = actions_account
    kind = data.draw(st.sampled_from(["own", "own", "own", "foreign", "odd"]), "kind")
    if kind == "own":
        raw = data.draw(mostly([account.connection_id], id_forms(account.connection_id)), "id")
    elif kind == "foreign":
        raw = fz.other.connection_id
    else:
        raw = data.draw(st.sampled_from(ODD_IDS), "id")
    ref = data.draw(
        st.one_of(
            st.sampled_from(["t1", "w1@host", "nope", "%00", "%ED%A0%80", "x" * 600, "a/b"]),
            st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=122), max_size=20),
        ),
        "ref",
    )
    method, tail = data.draw(
        st.sampled_from(
            [
                ("POST", f"/jobs/{ref}/actions"),
                ("POST", "/jobs/t1/actions"),
                ("POST", "/jobs/actions"),
                ("POST", f"/workers/{ref}/actions"),
                ("POST", "/workers/w1@host/actions"),
                ("GET", "/commands"),
                ("GET", "/jobs/actions"),
                ("PUT", "/workers/w1@host/actions"),
            ]
        ),
        "endpoint",
    )
    filter_value = st.one_of(
        st.fixed_dictionaries(
            {"state": st.sampled_from(["failed", "cancelled", "completed"])},
            optional={
                "queue": st.one_of(st.just("celery"), weird),
                "q": st.one_of(st.just("x"), weird),
            },
        ),
        weird,
    )
    body = data.draw(
        body_strategy(
            {
                "action": st.one_of(st.sampled_from(ACTION_NAMES), weird),
                "signal": st.one_of(st.sampled_from([*contract.SIGNALS, "SIGSEGV"]), weird),
                "n": st.one_of(st.integers(-2, 102), weird),
                "filter": filter_value,
            }
        ),
        "body",
    )
    headers = json_headers(
        data.draw(mostly(VALID_CONTENT_TYPES, CONTENT_TYPES), "content_type"),
        data.draw(mostly([ORIGIN], ORIGINS), "origin"),
    )
    auth = data.draw(
        st.sampled_from([None, None, f"Bearer {account.api_key}", *AUTH_HEADERS]), "auth"
    )
    if auth is not None:
        headers["Authorization"] = auth
    logged_in = data.draw(mostly([True], [False]), "logged_in")
    client = fz.client(logged_in=logged_in, account=account)
    query = ""
    if method == "GET":
        query = data.draw(
            st.sampled_from(
                ["", "wait=0", "wait=0.01", "wait=26", "wait=nan", "after=0-0", "after=x", "%ff=1"]
            ),
            "query",
        )
    path = f"/api/connections/{raw}{tail}"
    response = send(fz, client, method, path, body=body, headers=headers, query=query)
    status = response.status_code
    where = f"{method} {path[:120]}?{query} -> {status} {response.get_data()[:300]!r}"
    assert status in (200, 202, 400, 401, 403, 404, 405, 413), where
    if status == 202:
        assert method == "POST" and auth is None and logged_in, where
        (command_id,) = response.get_json().values()
        assert str(uuid.UUID(command_id)) == command_id, where
    elif status == 200:
        assert method == "GET" and auth == f"Bearer {account.api_key}", where
        answer = response.get_json()
        assert set(answer) == {"data", "lastId"}, where
        assert all(
            set(c) >= {"streamId", "commandId", "action", "requestedAt"} for c in answer["data"]
        )


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


@st.composite
def valid_command_result(draw, connection_id: str) -> dict:
    """An agent's `command_result` (the outcome of an operator action)."""
    command = {
        "commandId": draw(st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=64))),
        "action": draw(st.sampled_from(contract.COMMAND_ACTIONS)),
        "status": draw(st.sampled_from(contract.COMMAND_STATUSES)),
    }
    detail = draw(
        st.one_of(
            st.none(),
            st.just({"newJobId": "t2"}),
            st.just({"error": "arguments not captured"}),
            st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        )
    )
    if detail is not None:
        command["detail"] = detail
    event = {
        "type": "command_result",
        "timestamp": draw(st.sampled_from(TIMESTAMPS)),
        "framework": "celery",
        "connectionId": connection_id,
        "command": command,
    }
    producer_id = draw(st.one_of(st.none(), st.uuids().map(str)))
    if producer_id is not None:
        event["id"] = producer_id
    return event


def ingest_event(connection_id: str) -> st.SearchStrategy[dict]:
    """A valid producer event of any type (a command result one time in four)."""
    job_or_snapshot = valid_event(connection_id)
    return st.one_of(
        job_or_snapshot, job_or_snapshot, job_or_snapshot, valid_command_result(connection_id)
    )


PAYLOAD_OF = {
    "job_state_change": "job",
    "worker_heartbeat": "worker",
    "worker_state_change": "worker",
    "queue_snapshot": "queue",
    "command_result": "command",
}
# The contract's field tables, from the one place that defines them (sorted: a
# stable order for derandomized runs).
PAYLOAD_FIELDS = {
    "job": sorted(f.name for f in schema_module.JOB if f.kind != schema_module.EVENT_TIME),
    "worker": sorted(f.name for f in schema_module.WORKER if f.kind != schema_module.EVENT_TIME),
    "queue": sorted(f.name for f in schema_module.QUEUE if f.kind != schema_module.EVENT_TIME),
    "command": sorted(f.name for f in schema_module.COMMAND if f.kind != schema_module.EVENT_TIME),
}
TOP_FIELDS = [
    "type",
    "timestamp",
    "framework",
    "connectionId",
    "id",
    "job",
    "worker",
    "queue",
    "command",
]


@st.composite
def mutated_event(draw, connection_id: str) -> dict:
    """A valid event with exactly one thing changed."""
    event = draw(ingest_event(connection_id))
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
        events = draw(st.lists(ingest_event(connection_id), min_size=0, max_size=3))
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


# -- the job index: GET /api/connections/<id>/jobs, /jobs/<job>, /workers, /queues --------
#
# Three connections of their own (the ingest fuzzer above fills the main one
# with random external ids, so existence could not be predicted there):
# A holds known jobs, workers and queues; B is someone else's; C takes the
# consistency property's random events.

ISO_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STREAM_ID_RE = re.compile(r"^\d+-\d+$")
JOB_STATES = list(contract.JOB_STATES)
#: The query parameters of the list, as the docs name them.
LIST_PARAMS = ["state", "queue", "name", "worker", "q", "limit", "cursor"]
#: External ids of A's odd jobs (each reachable by a percent-encoded path).
ODD_XIDS = [
    "a/b",
    "trail/",
    "a//b",
    "é",
    "sp ace",
    "a%2Fb",
    "%ED%A0%80",
    "nul\x00x",
    "?x#y&z=1",
    "..",
    ".",
    "\U0001f600",
    "\u0661\u0662",
    "x" * contract.MAX_EXTERNAL_ID,
]


@dataclass
class JobsEnv:
    a: Any  # tests.conftest.Account
    b: Any
    c: Any
    session_a: Any  # logged-in test clients
    session_b: Any
    xids: set[str]  # A's external ids
    ids: dict[str, str]  # A's job id -> external id
    #: A's jobs as its ingest left them (the latest data of each), newest update first.
    a_jobs: list[dict]


def _a_jobs(cid: str) -> list[dict]:
    events = []
    for i in range(240):
        state = "failed" if i % 10 == 0 else ("queued", "active", "completed", "retrying")[i % 4]
        fields: dict[str, Any] = {}
        if i % 7:
            fields["queue"] = f"q{i % 3}"
        if state != "queued":
            fields["workerId"] = f"w{i % 4}@host"
        if state == "failed":
            fields["error"] = f"boom {i}"
        if i % 3 == 0:  # a transition first: a timeline of two
            events.append(job_event(cid, f"job-{i}", "queued", name=f"tasks.t{i % 5}"))
        events.append(job_event(cid, f"job-{i}", state, name=f"tasks.t{i % 5}", **fields))
    events += [job_event(cid, xid, "completed", name="odd.names") for xid in ODD_XIDS]
    events += [worker_event(cid, f"w{i}@host", "busy", activeJobs=i) for i in range(4)]
    events += [queue_event(cid, f"q{i}", 10 * i) for i in range(3)]
    return events


@pytest.fixture(scope="module")
def jobs_env(fz: Fuzz, redis_url):
    from sluice.schema import stable_id

    a, b, c = (make_account(redis_url, name) for name in ("jobs A", "jobs B", "jobs C"))
    a_events = _a_jobs(a.connection_id)
    for account, events in (
        (a, a_events),
        (b, [job_event(b.connection_id, "job-1", "failed", queue="q0")]),
    ):
        for ev in events:
            ev["connectionId"] = account.connection_id
        response = fz.client().post(
            "/api/ingest",
            json={"events": events},
            headers={"Authorization": f"Bearer {account.api_key}"},
        )
        assert response.status_code == 202, response.get_data()
        assert response.get_json()["accepted"] == len(events)
    xids = {f"job-{i}" for i in range(240)} | set(ODD_XIDS)
    latest: dict[str, dict] = {}
    for ev in a_events:
        if ev["type"] == "job_state_change":
            latest.pop(ev["job"]["externalId"], None)  # re-inserted last: newest
            latest[ev["job"]["externalId"]] = dict(
                ev["job"], id=stable_id(a.connection_id, "job", ev["job"]["externalId"])
            )
    return JobsEnv(
        a=a,
        b=b,
        c=c,
        session_a=fz.client(logged_in=True, account=a),
        session_b=fz.client(logged_in=True, account=b),
        xids=xids,
        ids={stable_id(a.connection_id, "job", x): x for x in xids},
        a_jobs=list(latest.values())[::-1],
    )


# Who asks, and for which connection.
READERS = ["key_a", "key_a", "session_a", "session_a", "key_b", "session_b", "none", "bad"]


def reader(env: JobsEnv, fz: Fuzz, who: str, bad_header: str | None) -> tuple[Any, dict, str]:
    """(client, headers, the connection id it may read or "")."""
    if who == "key_a":
        return fz.client(), {"Authorization": f"Bearer {env.a.api_key}"}, env.a.connection_id
    if who == "key_b":
        return fz.client(), {"Authorization": f"Bearer {env.b.api_key}"}, env.b.connection_id
    if who == "session_a":
        return env.session_a, {}, env.a.connection_id
    if who == "session_b":
        return env.session_b, {}, env.b.connection_id
    if who == "bad":  # a malformed or unknown key, with or without A's session
        client = env.session_a if bad_header and "x" in bad_header else fz.client()
        return client, {"Authorization": bad_header}, ""
    return fz.client(), {}, ""


def connection_segment(draw, env: JobsEnv) -> str:
    """The path's connection id, raw (percent-encoded where it needs to be)."""
    kind = draw(st.sampled_from(["a"] * 6 + ["a_form", "b", "random", "odd"]), "cid_kind")
    if kind == "a":
        return env.a.connection_id
    if kind == "a_form":
        return draw(st.sampled_from(id_forms(env.a.connection_id)), "cid_form")
    if kind == "b":
        return env.b.connection_id
    if kind == "random":
        return str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1), "cid_int")))
    return draw(st.sampled_from([i for i in ODD_IDS if i]), "cid_odd")


def expected_connection(raw: str, readable: str) -> tuple[str, set[str]] | int:
    """What the connection part of a request must give: 401/404 (an int), or
    ("ok", set()) / ("bad", {"id"}) once past it. `readable` is the connection
    the credentials may read ("" for none)."""
    decoded = unquote_to_bytes(raw).decode("utf-8", "replace")
    if "/" in decoded or not decoded:
        return 404  # another path altogether
    if not readable:
        return 401  # 401 before any 400
    try:
        canonical = str(uuid.UUID(decoded))
    except ValueError:
        return ("bad", {"id"})
    return ("ok", set()) if canonical == readable else 404


def _first_args(query: str) -> dict[str, str]:
    """The parameters as Flask's request.args gives them: the first of each name."""
    first: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
        first.setdefault(key, value)
    return first


def _digits_value(raw: str) -> int | None:
    """An ASCII decimal's value (None if it is not one); huge ones are capped."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    stripped = raw.lstrip("0")
    return 2**64 if len(stripped) > 20 else int(stripped or "0")


def expected_query(first: dict[str, str]) -> tuple[set[str], set[str]]:
    """From docs/api.md alone: the parameters a 400 must name, and those it may
    (leading zeros past 4 / 16 characters: the docs give a range, not a length)."""
    must: set[str] = set()
    may: set[str] = set()
    for key in ("state", "queue", "name", "worker", "q"):
        value = first.get(key, "")
        if value and (
            len(value) > contract.MAX_QUERY or (key == "state" and value not in JOB_STATES)
        ):
            must.add(key)
    limit = first.get("limit", "")
    if limit:
        n = _digits_value(limit)
        if n is None or not 1 <= n <= contract.JOBS_PAGE_MAX:
            must.add("limit")
        elif len(limit) > 4:
            may.add("limit")
    cursor = first.get("cursor", "")
    if cursor:
        n = _digits_value(cursor)
        if n is None or n > contract.MAX_INTEGER:
            must.add("cursor")
        elif len(cursor) > 16:
            may.add("cursor")
    return must, may


def passes(job: dict, first: dict[str, str], exact: set[str]) -> bool:
    """Does `job` pass the query's filters and search (docs/api.md)?"""
    for key, field in (
        ("state", "state"),
        ("queue", "queue"),
        ("name", "name"),
        ("worker", "workerId"),
    ):
        if first.get(key) and job.get(field) != first[key]:
            return False
    q = first.get("q")
    return (
        not q or job["id"] in exact or job["externalId"].startswith(q) or job["name"].startswith(q)
    )


def exact_ids(first: dict[str, str], connection_id: str) -> set[str]:
    """The job ids a `q` names exactly: itself, and its external id's job."""
    from sluice.schema import stable_id

    q = first.get("q")
    return {q, stable_id(connection_id, "job", q)} if q else set()


def check_page(body: dict, first: dict[str, str], connection_id: str, where: str) -> None:
    """A 200 page: its shape, and every job on it passes the filters."""
    assert set(body) == {"data", "nextCursor", "streamId", "counts"}, f"{where}: {body!r:.300}"
    counts = body["counts"]
    assert set(counts) == {"total", *contract.JOB_STATES}, f"{where}: {counts!r}"
    assert all(isinstance(n, int) and n >= 0 for n in counts.values()), f"{where}: {counts!r}"
    assert sum(counts.values()) == 2 * counts["total"], f"{where}: {counts!r}"
    assert STREAM_ID_RE.match(body["streamId"]), f"{where}: streamId {body['streamId']!r}"
    cursor = body["nextCursor"]
    assert cursor is None or (cursor.isascii() and cursor.isdigit()), f"{where}: {cursor!r}"
    limit = int(first["limit"]) if first.get("limit") else contract.JOBS_PAGE_DEFAULT
    assert isinstance(body["data"], list) and len(body["data"]) <= limit, where
    exact = exact_ids(first, connection_id)
    for job in body["data"]:
        assert isinstance(job, dict) and ISO_MS_RE.match(job.get("updatedAt", "")), (
            f"{where}: {job!r:.300}"
        )
        assert passes(job, first, exact), f"{where}: a job that does not match: {job!r:.300}"
    ids = [job["id"] for job in body["data"]]
    assert len(ids) == len(set(ids)), f"{where}: a job twice on one page"
    stamps = [job["updatedAt"] for job in body["data"]]
    assert stamps == sorted(stamps, reverse=True), f"{where}: not newest first: {stamps}"


def check_a_page(env: JobsEnv, page: list[dict], cursor: Any, rest: list[dict], first, where):
    """On A, whose jobs are known: a page is exactly the next `limit` jobs of `rest`
    (A's matching jobs below the cursor, newest first) and a cursor follows when
    more remain. Exact without `q`, and with `q` alone; a search with filters
    looks at the most recent jobs of each name only (docs), so its page is a
    subset, in order."""
    limit = int(first["limit"]) if first.get("limit") else contract.JOBS_PAGE_DEFAULT
    got = [job["externalId"] for job in page]
    want = [job["externalId"] for job in rest]
    filtered = any(first.get(k) for k in ("state", "queue", "name", "worker"))
    if first.get("q") and filtered:
        assert all(x in want for x in got), f"{where}: {got} not among {want[:20]}"
        assert [x for x in want if x in got] == got, f"{where}: order {got}"
        return
    assert got == want[:limit], f"{where}: got {got[:10]}..., want {want[:10]}..."
    if len(want) > limit:
        assert cursor is not None, f"{where}: more jobs match, but nextCursor is null"
    for job in page:  # what each job is: its latest event's data
        known = next(j for j in rest if j["externalId"] == job["externalId"])
        for key in ("id", "state", "name", "queue", "workerId", "error"):
            assert job.get(key) == known.get(key), f"{where}: {key} of {job!r:.300}"


GOOD_PARAM_VALUES: dict[str, list[str]] = {
    "state": JOB_STATES,
    "queue": ["q0", "q1", "q2", "nope", "default"],
    "name": ["tasks.t0", "tasks.t3", "odd.names", "nope"],
    "worker": ["w0@host", "w3@host", "nope"],
    "q": ["job-1", "job-", "job-23", "tasks.", "tasks.t4", "a/", "é", "nul\x00", ".", "x" * 512],
    "limit": ["1", "2", "3", "50", "199", "200", "0200"],
    "cursor": ["0", "1", "10", "200", "100000", str(2**53)],
}
#: Values on each side of each documented bound.
BOUNDARY_PARAM_VALUES: dict[str, list[str]] = {
    "state": ["", "failed ", "Failed", "fail", "unknown", "cancelled", "canceled"],
    "limit": ["0", "1", "200", "201", "0200", "0201", "1000", "-0", "00", "1" + "0" * 20],
    "cursor": ["-1", "0", str(2**53), str(2**53 + 1), "0" * 15 + "1", "0" * 16 + "1", "1" * 17],
    **{
        key: ["x" * 1024, "x" * 1025, "é" * 1024, "é" * 1025, "x" * 512, "x" * 513, " ", "\x00"]
        for key in ("queue", "name", "worker", "q")
    },
}
#: Raw (already percent-encoded) query values of every odd kind.
ODD_PARAM_VALUES = [
    "",
    "%00",
    "a%00b",
    "%ED%A0%80",  # a surrogate, UTF-8 encoded (invalid): stays percent-encoded
    "%ED%B0%80x",
    "%FF",
    "%C0%AF",
    "%",
    "%zz",
    "%D9%A1%D9%A2",  # Arabic-Indic 12
    "%EF%BC%91",  # fullwidth 1
    "%C2%B2",  # superscript 2
    "-1",
    "-0",
    "1.5",
    "5.0",
    "1e2",
    "0x10",
    "%2B5",
    "+5",  # "+" is a space in a query
    " 5",
    "9" * 30,
    "9" * 5000,
    "9007199254740993",
    "00005",
    "00000000000000001",
    "x" * 512,
    "x" * 513,
    "x" * 1024,
    "x" * 1025,
    "%C3%A9" * 1024,  # 1,024 characters, 2,048 bytes
    "%C3%A9" * 1025,
    "%F0%9F%98%80" * 1024,
    "y" * 100_000,
    "null",
    "%5B%5D",
    "%7B%7D",
    "FAILED",
    "failed%20",
    "%E2%80%AEfailed",
    "%26",
    "%3D",
]
ODD_PARAM_NAMES = ["State", "%73tate", "limit%00", "unknown", "q%5B%5D", "", "cursor "]


@st.composite
def jobs_query(draw) -> str:
    """A raw query string: known and odd parameters, some repeated, some bare."""
    pairs = []
    for _ in range(draw(st.integers(0, 5), "n_params")):
        name = draw(st.one_of(st.sampled_from(LIST_PARAMS), st.sampled_from(ODD_PARAM_NAMES)))
        name = quote(name, safe="%") if "%" in name else quote(name, safe="")
        kind = draw(st.sampled_from(["good", "good", "boundary", "odd", "text"]))
        key = unquote_to_bytes(name).decode("utf-8", "replace")
        if kind == "good" and key in GOOD_PARAM_VALUES:
            value = quote(draw(st.sampled_from(GOOD_PARAM_VALUES[key])), safe="")
        elif kind == "boundary" and key in BOUNDARY_PARAM_VALUES:
            value = quote(draw(st.sampled_from(BOUNDARY_PARAM_VALUES[key])), safe="")
        elif kind == "text":
            value = quote(draw(st.text(max_size=8)), safe="")
        else:
            value = draw(st.sampled_from(ODD_PARAM_VALUES))
        pairs.append(name if draw(one_in(12)) else f"{name}={value}")
    return "&".join(pairs)


def _jobs_get(fz, client, headers, path, query, note=""):
    return send(fz, client, "GET", path, headers=headers, query=query, note=note)


@fuzz(250)
@given(data=st.data())
def test_fuzz_jobs_list(fz: Fuzz, jobs_env: JobsEnv, data):
    """GET /api/connections/<id>/jobs: 200/400/401/404 as documented; a 400 names
    exactly the bad parameters; a 200 is a page whose jobs pass its filters."""
    env = jobs_env
    who = data.draw(st.sampled_from(READERS), "who")
    client, headers, readable = reader(
        env, fz, who, data.draw(st.sampled_from(AUTH_HEADERS), "bad_header")
    )
    segment = connection_segment(data.draw, env)
    query = data.draw(jobs_query(), "query")
    path = f"/api/connections/{segment}/jobs"
    response = _jobs_get(fz, client, headers, path, query, note=f"who={who}")
    status = response.status_code
    where = f"GET {path[:120]}?{query[:200]} who={who} -> {status} {response.get_data()[:300]!r}"
    assert status in (200, 400, 401, 404), where
    verdict = expected_connection(segment, readable)
    if isinstance(verdict, int):
        assert status == verdict, where
        return
    first = _first_args(query)
    if verdict[0] == "bad":
        must, may = {"id"}, set()
    else:
        must, may = expected_query(first)
    if status == 200:
        assert not must, where
        body = response.get_json()
        check_page(body, first, readable, where)
        on_a = readable == env.a.connection_id and not first.get("cursor")
        exact = exact_ids(first, readable)
        rest = [j for j in env.a_jobs if passes(j, first, exact)] if on_a else []
        if on_a:
            check_a_page(env, body["data"], body["nextCursor"], rest, first, where)
        next_cursor = body["nextCursor"]
        if next_cursor is not None and data.draw(st.booleans(), "follow"):
            # The next page: none of this page's jobs again, all older.
            follow = urlencode({**first, "cursor": next_cursor})
            nxt = _jobs_get(fz, client, headers, path, follow, note="next page")
            assert nxt.status_code == 200, (where, nxt.get_data()[:300])
            later = nxt.get_json()
            check_page(later, {**first, "cursor": next_cursor}, readable, where + " (next page)")
            this = body["data"]
            assert not {j["id"] for j in this} & {j["id"] for j in later["data"]}, where
            if this and later["data"]:
                assert later["data"][0]["updatedAt"] <= this[-1]["updatedAt"], where
            if on_a and this:
                seen = [j["externalId"] for j in rest].index(this[-1]["externalId"])
                check_a_page(
                    env,
                    later["data"],
                    later["nextCursor"],
                    rest[seen + 1 :],
                    first,
                    where + " (next page)",
                )
        return
    assert status == 400, where
    details = set(response.get_json()["error"]["details"])
    # `may`: refusing is allowed (e.g. a cursor of 17 digits with leading zeros).
    assert must or may, f"{where}: a valid query refused"
    assert must <= details <= must | may, f"{where}: expected {sorted(must)} (+{sorted(may)})"


#: Raw path parts after /jobs/ (percent-encoded where that is the point).
ODD_JOB_REFS = [
    "%ED%A0%80",
    "%ED%B0%80x",
    "%ED%A0%80%ED%B0%80",
    "%FF",
    "%C0%AF",
    "%00",
    "a%00b",
    "%2F",
    "%2Fx",
    "a%2Fb",
    "a/b",
    "a/",
    "a//b",
    "//",
    "/x",
    "..",
    "%2e%2e",
    ".",
    "%20",
    "x" * 512,
    "x" * 513,
    "x" * 2000,
    "%F0%9F%98%80" * 512,
    "%F0%9F%98%80" * 513,
    "%D9%A1%D9%A2",
    "00000000-0000-0000-0000-000000000000",
    "a" * 10_000,
    "%25",
    "%25ED%25A0%2580",  # the literal external id "%ED%A0%80"
    "?",
    "%3F",
    "job-1%3Fx",
    "%E2%80%AE",
]


@fuzz(200)
@given(data=st.data())
def test_fuzz_job_detail(fz: Fuzz, jobs_env: JobsEnv, data):
    """GET /api/connections/<id>/jobs/<anything>: 200 for a job of the connection
    (by id or external id), 404 for none, 400 past 512 characters; never a 500."""
    env = jobs_env
    who = data.draw(st.sampled_from(READERS), "who")
    client, headers, readable = reader(
        env, fz, who, data.draw(st.sampled_from(AUTH_HEADERS), "bad_header")
    )
    segment = connection_segment(data.draw, env)
    kind = data.draw(st.sampled_from(["xid", "xid", "id", "id_upper", "odd", "odd", "text"]))
    if kind == "xid":
        ref = quote(data.draw(st.sampled_from(sorted(env.xids)), "xid"), safe="")
    elif kind in ("id", "id_upper"):
        ref = data.draw(st.sampled_from(sorted(env.ids)), "id")
        ref = ref.upper() if kind == "id_upper" else ref
    elif kind == "text":
        ref = quote(data.draw(st.text(min_size=1, max_size=12), "text"), safe="")
    else:
        ref = data.draw(st.sampled_from(ODD_JOB_REFS), "ref")
    path = f"/api/connections/{segment}/jobs/{ref}"
    query = data.draw(st.sampled_from(["", "x=1", "state=bogus", "limit=0", "%00"]), "query")
    response = _jobs_get(fz, client, headers, path, query, note=f"who={who}")
    status = response.status_code
    where = f"GET {path[:160]} who={who} -> {status} {response.get_data()[:300]!r}"
    assert status in (200, 400, 401, 404), where
    job = unquote_to_bytes(ref).decode("utf-8", "replace")
    if job.startswith("/"):
        # Not a route: the path converter takes no leading slash (so an external
        # id that starts with "/" is reachable by its job id only).
        assert status == 404, where
        return
    verdict = expected_connection(segment, readable)
    if isinstance(verdict, int):
        assert status == verdict, where
        return
    if verdict[0] == "bad":
        assert status == 400 and set(response.get_json()["error"]["details"]) == {"id"}, where
        return
    if len(job) > contract.MAX_EXTERNAL_ID:
        assert status == 400, where
        assert set(response.get_json()["error"]["details"]) == {"job"}, where
        return
    found = readable == env.a.connection_id and (job in env.xids or job in env.ids)
    if readable == env.b.connection_id:
        found = job in ("job-1", stable_id_b(env))
    assert status == (200 if found else 404), where
    if status == 200:
        body = response.get_json()
        assert set(body) == {"data", "streamId"}, where
        got = body["data"]
        assert got["id"] == job or got["externalId"] == job, where
        assert isinstance(got["timeline"], list) and 1 <= len(got["timeline"]) <= 50, where
        assert got["timeline"][-1]["state"] == got["state"], where


def stable_id_b(env: JobsEnv) -> str:
    from sluice.schema import stable_id

    return stable_id(env.b.connection_id, "job", "job-1")


@fuzz(100)
@given(data=st.data())
def test_fuzz_workers_and_queues(fz: Fuzz, jobs_env: JobsEnv, data):
    """GET …/workers and …/queues: 200 (the latest snapshots, most recent first),
    400 for an id that is no UUID, 401 without credentials, 404 for anyone else's;
    other methods 405."""
    env = jobs_env
    who = data.draw(st.sampled_from(READERS), "who")
    client, headers, readable = reader(
        env, fz, who, data.draw(st.sampled_from(AUTH_HEADERS), "bad_header")
    )
    segment = connection_segment(data.draw, env)
    what = data.draw(st.sampled_from(["workers", "queues"]), "what")
    tail = data.draw(st.sampled_from(["", "", "", "/", "/x", "%2F"]), "tail")
    method = data.draw(st.sampled_from(["GET"] * 6 + ["POST", "DELETE", "PUT"]), "method")
    query = data.draw(st.one_of(st.just(""), jobs_query()), "query")
    path = f"/api/connections/{segment}/{what}{tail}"
    response = send(fz, client, method, path, headers=headers, query=query, note=f"who={who}")
    status = response.status_code
    where = f"{method} {path[:160]} who={who} -> {status} {response.get_data()[:300]!r}"
    if unquote_to_bytes(tail) not in (b"", b"/"):
        assert status == 404, where  # not a route
        return
    verdict = expected_connection(segment, readable)
    if verdict == 404 and "/" in unquote_to_bytes(segment).decode("utf-8", "replace"):
        assert status == 404, where
        return
    if method != "GET":
        assert status == 405, where  # a known path: 405 before anything else
        return
    if isinstance(verdict, int):
        assert status == verdict, where
        return
    if verdict[0] == "bad":
        assert status == 400 and set(response.get_json()["error"]["details"]) == {"id"}, where
        return
    assert status == 200, where
    body = response.get_json()
    assert set(body) == {"data", "streamId"} and STREAM_ID_RE.match(body["streamId"]), where
    # (Most recently seen first; one batch's snapshots share a millisecond, so
    # their order among themselves is not the events' order: compared as sets.)
    if readable == env.a.connection_id:
        if what == "workers":
            got = sorted((w["externalId"], w["activeJobs"]) for w in body["data"])
            assert got == [(f"w{i}@host", i) for i in range(4)], where
        else:
            got = sorted((q["name"], q["depth"]) for q in body["data"])
            assert got == [("q0", 0), ("q1", 10), ("q2", 20)], where
    else:
        assert body["data"] == [], where


# -- the job index agrees with the stream ------------------------------------------------

JOB_EXTRAS = ("updatedAt", "timeline", "args", "kwargs", "result", "traceback")


@st.composite
def index_events(draw, connection_id: str, token: str) -> list[dict]:
    """Valid events of a few jobs (mostly one: long timelines), workers and queues
    whose names start with `token` (so that one example's jobs are found apart
    from every other's)."""
    events = []
    for _ in range(draw(st.integers(1, 12), "n_events")):
        event = draw(valid_event(connection_id))
        payload = event[PAYLOAD_OF[event["type"]]]
        if event["type"] == "job_state_change":
            suffix = draw(
                st.one_of(
                    st.sampled_from(["a"] * 4 + ["b", "c", "a/b", "é", "x y"]), st.text(max_size=6)
                )
            )
            payload["externalId"] = token + suffix
            if draw(one_in(3)):
                ext = payload.setdefault("extensions", {})
                for key in ("args", "kwargs", "result"):
                    if draw(st.booleans()):
                        ext[key] = draw(
                            st.one_of(
                                st.none(),
                                st.text(max_size=8),
                                st.integers(-5, 5),
                                st.just([1, "x"]),
                            )
                        )
            if draw(one_in(4)):
                payload["stacktrace"] = draw(
                    st.sampled_from(["", 'File "x.py", line 1\nE: x', "t"])
                )
            if draw(one_in(3)):
                # 600 emoji: a timeline entry of ~2 KB, so a few reach its 16 KiB
                payload["error"] = draw(
                    st.sampled_from(["", "boom", "e" * 600, "\U0001f600" * 600])
                )
        elif event["type"] == "queue_snapshot":
            payload["name"] = token + draw(st.sampled_from(["q1", "q2"]))
        else:
            payload["externalId"] = token + draw(st.sampled_from(["w1", "w2"]))
        events.append(event)
    return events


def expected_timeline(events: list[dict]) -> list[dict]:
    """docs/api.md's timeline of one job's events (stream data, oldest first),
    before its bound in bytes (see check_timeline)."""
    out = []
    for i, d in enumerate(events):
        entry: dict[str, Any] = {"state": d["state"], "timestamp": d["timestamp"]}
        for key in ("workerId", "attempt"):
            if d.get(key) is not None:
                entry[key] = d[key]
        if d.get("error"):
            entry["error"] = d["error"][: contract.MAX_TIMELINE_ERROR]
        entry["previousState"] = events[i - 1]["state"] if i else d.get("previousState")
        out.append(entry)
    return out[-contract.MAX_TIMELINE :]


def _json_bytes(entries: list[dict]) -> int:
    return sum(
        len(json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode()) for e in entries
    )


#: docs/api.md: a state's step in one attempt of a job's life.
STEPS = {"active": 1, "retrying": 2, "completed": 2, "failed": 2, "cancelled": 2}


def _age(d: dict) -> tuple[str, int, int]:
    return d["timestamp"], d.get("attempt") or 1, STEPS.get(d["state"], 0)


class IndexedJob:
    """docs/api.md's job as the index keeps it, event by event as they arrive: as
    of its newest event by age (timestamp, then attempt, then step; the one that
    arrived last at the same age); an older event (late) joins the timeline
    before the first entry of its millisecond or later and changes nothing else.
    The timeline keeps its newest entries: at most 50, and at most 16 KiB
    (newline-joined) unless one."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.timeline: list[dict] = []

    def apply(self, d: dict) -> bool:
        """Index one event; whether it is the job's latest (not late)."""
        late = bool(self.data) and _age(d) < _age(self.data)
        entry: dict[str, Any] = {"state": d["state"], "timestamp": d["timestamp"]}
        for key in ("workerId", "attempt"):
            if d.get(key) is not None:
                entry[key] = d[key]
        if d.get("error"):
            entry["error"] = d["error"][: contract.MAX_TIMELINE_ERROR]
        prev = self.data.get("state") if self.data and not late else None
        entry["previousState"] = prev or d.get("previousState") or None
        if late:
            at = next(
                (i for i, e in enumerate(self.timeline) if e["timestamp"] >= d["timestamp"]),
                len(self.timeline),
            )
            self.timeline.insert(at, entry)
        else:
            self.timeline.append(entry)
            self.data = d
        while len(self.timeline) > 1 and (
            len(self.timeline) > contract.MAX_TIMELINE
            or _json_bytes(self.timeline) + len(self.timeline) - 1 > contract.MAX_TIMELINE_BYTES
        ):
            self.timeline.pop(0)
        return not late


def check_timeline(got: list[dict], events: list[dict], where: str) -> None:
    """The last 50 transitions, and at most 16 KiB of them (the newest one always):
    the newest entries of the expected ones, as many as fit."""
    want = expected_timeline(events)
    assert 1 <= len(got) <= len(want) and got == want[len(want) - len(got) :], (
        f"{where}: timeline {got!r:.500} is not the newest of {want!r:.500}"
    )
    limit = contract.MAX_TIMELINE_BYTES
    if len(got) > 1:
        assert _json_bytes(got) <= limit, f"{where}: a timeline of {_json_bytes(got)} bytes"
    if len(got) < len(want):  # one more would not have fitted (with separators)
        more = want[len(want) - len(got) - 1 :]
        assert _json_bytes(more) + len(more) - 1 > limit, f"{where}: timeline cut short"


@fuzz(60)
@given(data=st.data())
def test_fuzz_job_index_agrees_with_the_stream(fz: Fuzz, jobs_env: JobsEnv, data):
    """Random valid events in one to three batches; then every job, worker and
    queue they name is, in the index, what the stream's latest event of it says:
    the detail (by external id and by id), its timeline, arguments and traceback,
    the list (a search by the example's prefix, newest first, and by state), and
    the workers' and queues' snapshots."""
    account = jobs_env.c
    cid = account.connection_id
    token = uuid.uuid4().hex[:12] + "-"
    key = _stream_key(cid)
    last = fz.r.xrevrange(key, count=1)
    since = last[0][0].decode() if last else "0-0"
    auth = {"Authorization": f"Bearer {account.api_key}"}
    posted: list[dict] = []
    for _ in range(data.draw(st.integers(1, 3), "n_batches")):
        events = data.draw(index_events(cid, token), "batch")
        posted += events
        body = encode({"events": events}, ascii_only=not data.draw(one_in(3)))
        post_ingest_to(fz, account, body, auth)
    # The oracle: the stream's entries since the example began, in order.
    stream = [
        (fields[b"t"].decode(), json.loads(fields[b"d"]))
        for _, fields in fz.r.xrange(key, min="(" + since)
    ]
    jobs: dict[str, list[dict]] = {}
    models: dict[str, IndexedJob] = {}
    order: list[str] = []  # external ids, by their latest event applied (not late)
    snapshots: dict[str, dict[str, dict]] = {"workers": {}, "queues": {}}
    for name, d in stream:
        if name == contract.JOB_STATE_CHANGE:
            jobs.setdefault(d["externalId"], []).append(d)
            model = models.setdefault(d["externalId"], IndexedJob())
            if model.apply(d):
                if d["externalId"] in order:
                    order.remove(d["externalId"])
                order.append(d["externalId"])
        elif name == contract.QUEUE_SNAPSHOT:
            snapshots["queues"][d["name"]] = d
        else:
            snapshots["workers"][d["externalId"]] = d
    client = fz.client()
    base = f"/api/connections/{cid}"
    details = {}
    for xid, events in jobs.items():
        response = send(fz, client, "GET", f"{base}/jobs/{quote(xid, safe='')}", headers=auth)
        assert response.status_code == 200, (xid, response.get_data()[:300])
        job = response.get_json()["data"]
        where = f"job {xid!r} after {len(events)} events"
        # The newest event's data (by age; at the same age the one that arrived
        # last), but for its stacktrace (the detail's `traceback`).
        model = models[xid]
        latest = {k: v for k, v in model.data.items() if k != "stacktrace"}
        assert {k: v for k, v in job.items() if k not in JOB_EXTRAS} == latest, where
        assert ISO_MS_RE.match(job["updatedAt"]), where
        assert job["timeline"] == model.timeline, (
            f"{where}: timeline {job['timeline']!r:.500} is not {model.timeline!r:.500}"
        )
        for field in ("args", "kwargs", "result"):
            sent = [
                (e.get("extensions") or {}).get(field)
                for e in events
                if (e.get("extensions") or {}).get(field) is not None
            ]
            assert job.get(field, "absent") == (sent[-1] if sent else "absent"), (where, field)
        traces = [e["stacktrace"] for e in events if e.get("stacktrace")]
        assert job.get("traceback", "absent") == (traces[-1] if traces else "absent"), where
        by_id = send(fz, client, "GET", f"{base}/jobs/{job['id']}", headers=auth)
        assert by_id.status_code == 200 and by_id.get_json()["data"] == job, where
        details[xid] = job
    # Events of the example that the stream does not hold (duplicates) are not indexed either.
    for ev in posted:
        xid = ev.get("job", {}).get("externalId")
        if xid is not None and xid not in jobs:
            gone = send(fz, client, "GET", f"{base}/jobs/{quote(xid, safe='')}", headers=auth)
            assert gone.status_code == 404, (xid, gone.get_data()[:300])
    # The list: the example's jobs by their prefix, newest update first; by state.
    page = send(
        fz, client, "GET", f"{base}/jobs", headers=auth, query=urlencode({"q": token, "limit": 200})
    )
    assert page.status_code == 200, page.get_data()[:300]
    listed = page.get_json()["data"]
    assert [j["externalId"] for j in listed] == order[::-1], "the list's order"
    for j in listed:
        want = {k: v for k, v in details[j["externalId"]].items() if k not in JOB_EXTRAS[1:]}
        assert j == want, f"the list's {j['externalId']!r} differs from its detail"
    for state in sorted({model.data["state"] for model in models.values()}):
        page = send(
            fz,
            client,
            "GET",
            f"{base}/jobs",
            headers=auth,
            query=urlencode({"q": token, "state": state, "limit": 200}),
        )
        want = [x for x in order[::-1] if models[x].data["state"] == state]
        assert [j["externalId"] for j in page.get_json()["data"]] == want, state
    # Workers and queues: the latest snapshot of each, most recently seen first.
    for what, key_field in (("workers", "externalId"), ("queues", "name")):
        response = send(fz, client, "GET", f"{base}/{what}", headers=auth)
        assert response.status_code == 200, response.get_data()[:300]
        ours = {
            s[key_field]: s for s in response.get_json()["data"] if s[key_field].startswith(token)
        }
        if what == "workers":
            # The workers API adds liveness (docs/api.md, "Worker liveness"): a worker
            # whose last event is older than the expiry reads offline, saying what it
            # last reported. Taken back off, what is left is the snapshot itself.
            for worker in ours.values():
                assert isinstance(worker.pop("expired"), bool), worker
                if "offlineReason" in worker:
                    assert worker.pop("offlineReason") == "heartbeat_expired", worker
                    assert isinstance(worker.pop("silentSeconds"), int), worker
                    assert worker["state"] == "offline", worker
                    worker["state"] = worker.pop("reportedState")
        assert ours == snapshots[what], what  # (order: see test_fuzz_workers_and_queues)


def post_ingest_to(fz: Fuzz, account: Any, body: bytes, headers: dict) -> None:
    response = send(fz, fz.client(), "POST", "/api/ingest", body=body, headers=headers)
    assert response.status_code == 202, response.get_data()[:300]


# -- system endpoints and pages ------------------------------------------------------


@fuzz(80)
@given(data=st.data())
def test_fuzz_system_endpoints(fz: Fuzz, data):
    app = data.draw(st.sampled_from(["debug", "default"]), "app")
    client = (fz.app if app == "debug" else fz.app_no_debug).test_client()
    method = data.draw(
        st.sampled_from(["GET", "GET", "HEAD", "POST", "OPTIONS", "DELETE"]), "method"
    )
    path = data.draw(
        st.sampled_from(["/api/health", "/api/config", "/api/debug/stats", "/metrics"]), "path"
    )
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
    "jobs",
    "workers",
    "queues",
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
    "/metrics",
    "/metrics/",
    "//metrics",
    "/api/connections/00000000-0000-0000-0000-000000000000/jobs",
    "/api/connections/00000000-0000-0000-0000-000000000000/jobs/x/y",
    "/api/connections/00000000-0000-0000-0000-000000000000/workers",
    "/api/connections/00000000-0000-0000-0000-000000000000/queues/",
    "/api/connections/00000000-0000-0000-0000-000000000000/rotate-key",
    "/api/connections/00000000-0000-0000-0000-000000000000/keys",
    "/api/connections/00000000-0000-0000-0000-000000000000/keys/x",
    "/api/connections/00000000-0000-0000-0000-000000000000/jobs/actions",
    "/api/connections/00000000-0000-0000-0000-000000000000/jobs/x/actions",
    "/api/connections/00000000-0000-0000-0000-000000000000/workers/w1@h/actions",
    "/api/connections/00000000-0000-0000-0000-000000000000/commands",
    "/api/key",
    "/api/key/",
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


#: GET requests on the job index, as (path after the connection, query, status,
#: the parameters a 400 names), on connection A with its key.
JOBS_CORPUS = [
    ("/jobs", "limit=%ED%A0%80", 400, {"limit"}),  # a surrogate, percent-encoded
    ("/jobs", "limit=%D9%A5", 400, {"limit"}),  # Arabic-Indic 5
    ("/jobs", "limit=1.5&cursor=-1", 400, {"limit", "cursor"}),
    ("/jobs", "cursor=9007199254740993", 400, {"cursor"}),
    ("/jobs", "cursor=" + "9" * 5000, 400, {"cursor"}),
    ("/jobs", "state=%00", 400, {"state"}),
    ("/jobs", "queue=" + "x" * 1025, 400, {"queue"}),
    ("/jobs", "limit=5&limit=x", 200, None),  # the first of a repeated parameter
    ("/jobs", "q=%00&worker=%ED%A0%80", 200, None),
    ("/jobs/%ED%A0%80", "", 404, None),
    ("/jobs/%25ED%25A0%2580", "", 200, None),  # the external id "%ED%A0%80"
    ("/jobs/" + "x" * 2000, "", 400, {"job"}),
    ("/jobs/%00", "", 404, None),
    ("/jobs/nul%00x", "", 200, None),
    ("/jobs/a%2Fb", "", 200, None),  # the external id "a/b"
    ("/jobs/a//b", "", 200, None),
    ("/jobs/%2Fx", "", 404, None),
    ("/workers/", "", 200, None),
    ("/queues", "limit=0", 200, None),
]


@pytest.mark.parametrize(("tail", "query", "status", "fields"), JOBS_CORPUS)
def test_corpus_jobs(fz: Fuzz, jobs_env: JobsEnv, tail, query, status, fields):
    env = jobs_env
    response = send(
        fz,
        fz.client(),
        "GET",
        f"/api/connections/{env.a.connection_id}{tail}",
        headers={"Authorization": f"Bearer {env.a.api_key}"},
        query=query,
    )
    assert response.status_code == status, response.get_data()[:300]
    if fields is not None:
        assert set(response.get_json()["error"]["details"]) == fields


@pytest.mark.parametrize("length", [513, contract.MAX_QUERY])
def test_corpus_jobs_q_up_to_1024(fz: Fuzz, jobs_env: JobsEnv, length):
    env = jobs_env
    response = send(
        fz,
        fz.client(),
        "GET",
        f"/api/connections/{env.a.connection_id}/jobs",
        headers={"Authorization": f"Bearer {env.a.api_key}"},
        query="q=" + "x" * length,
    )
    assert response.status_code == 200, response.get_data()[:300]
    if length == contract.MAX_EXTERNAL_ID + 1:
        # "x" * 512 is one of A's external ids: a longer prefix matches nothing.
        assert response.get_json()["data"] == []


def test_corpus_job_timeline_bytes(fz: Fuzz, jobs_env: JobsEnv):
    """A timeline of ~2 KB entries (500-character errors of 4-byte characters):
    the newest that fit in 16 KiB, as the stream's events say."""
    account = jobs_env.c
    cid = account.connection_id
    xid = "long-timeline-" + uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {account.api_key}"}
    states = ["queued", "active", "retrying", "active", "failed"] * 3
    events = [
        job_event(cid, xid, state, error="\U0001f600" * 600, attempt=i + 1)
        for i, state in enumerate(states)
    ]
    for ev in events:
        ev["connectionId"] = cid
    post_ingest_to(fz, account, encode({"events": events}), auth)
    data = [
        json.loads(fields[b"d"])
        for _, fields in fz.r.xrange(_stream_key(cid))
        if json.loads(fields[b"d"]).get("externalId") == xid
    ]
    assert len(data) == len(states)
    response = send(fz, fz.client(), "GET", f"/api/connections/{cid}/jobs/{xid}", headers=auth)
    assert response.status_code == 200, response.get_data()[:300]
    timeline = response.get_json()["data"]["timeline"]
    assert 1 < len(timeline) < len(states)  # cut by bytes, not by count
    check_timeline(timeline, data, xid)
