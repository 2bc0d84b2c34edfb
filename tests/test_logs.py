"""Logs of a real gunicorn+gevent server: SLUICE_LOG_FORMAT=json gives one JSON object
per line (gunicorn's error log, the access log, the app's own lines), and each
request's id (X-Request-ID, taken when sane, else made) is the same in its response
and in its log lines. The default stays human-readable.

Each server here writes stdout and stderr to its own log file (tests/conftest.py),
read once the server has stopped, so every line it wrote is there.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.conftest import SluiceServer, free_port
from tests.sse import open_stream
from tests.util import ingest, jobs

HEX32 = re.compile(r"[0-9a-f]{32}")
USER_AGENT = 'log-test "quoted" \\ agent'
HOSTILE = {
    "script": "<script>alert(1)</script>",
    "json": 'x"}, "level": "critical", "forged": {"a": "',
    "long": "a" * 129,
    "spaces": "two words",
}


@contextmanager
def running(redis_url: str, **env: str) -> Iterator[SluiceServer]:
    server = SluiceServer(redis_url, env)
    server.log_path.unlink(missing_ok=True)  # this run's lines only
    try:
        server.start(wait_healthy=env.get("SECRET_KEY") is None)
        yield server
    finally:
        server.stop()


def read_lines(server: SluiceServer) -> list[str]:
    return [line for line in server.log_path.read_bytes().split(b"\n") if line]


def json_lines(server: SluiceServer) -> list[dict]:
    """Every line the server wrote, each one JSON object (or the test fails, naming it)."""
    parsed = []
    for raw in read_lines(server):
        try:
            line = json.loads(raw)
        except ValueError:
            pytest.fail(f"not a JSON line in {server.log_path}: {raw[:300]!r}")
        assert isinstance(line, dict), raw
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        parsed.append(line)
    return parsed


def get(server: SluiceServer, path: str, request_id: str | None = None) -> requests.Response:
    headers = {"User-Agent": USER_AGENT}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return requests.get(server.url + path, headers=headers, timeout=10)


def raw_request(server: SluiceServer, head: bytes) -> tuple[int, dict[str, str]]:
    """One request over a raw socket (header bytes that `requests` would not send)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, *header_lines = reply.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


@pytest.fixture(scope="module")
def json_run(redis_url):
    """A JSON-logging server with the access log on, the requests made to it, and every
    line it wrote until it stopped."""
    from tests.conftest import make_account

    account = make_account(redis_url)
    answers: dict[str, tuple[int, str, str]] = {}  # name -> (status, X-Request-ID, path)
    with running(redis_url, SLUICE_LOG_FORMAT="json", SLUICE_ACCESS_LOG="-") as server:
        for name, path, sent in [
            ("given", "/api/health", "given-id.1_A"),
            ("generated", "/api/health", None),
            ("not-found", "/api/no-such-thing", "given-404"),
            ("unauthorized", "/api/events/stream?connectionId=x", None),
            *[(f"hostile-{k}", "/api/health", v) for k, v in HOSTILE.items()],
        ]:
            response = get(server, path, sent)
            answers[name] = (response.status_code, response.headers["X-Request-ID"], path)
        status, headers = raw_request(
            server,
            b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Request-ID: caf\xe9\r\n"
            b"Connection: close\r\n\r\n",
        )
        answers["hostile-latin1"] = (status, headers["x-request-id"], "/api/health")
        response = ingest(
            server.url, account.api_key, account.connection_id, jobs(account.connection_id, 2)
        )
        answers["ingest"] = (response.status_code, response.headers["X-Request-ID"], "/api/ingest")
        stream = open_stream(
            server.url,
            account.connection_id,
            api_key=account.api_key,
            headers={"X-Request-ID": "stream-id-1"},
        )
        stream.read_bytes(1)  # the stream is live
        stream.close()
        answers["stream"] = (stream.status, stream.headers["x-request-id"], "/api/events/stream")
    return answers, json_lines(server), server.log_path.read_bytes()


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "gunicorn.access"]


def test_every_line_is_one_json_object(json_run):
    _, lines, _ = json_run
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers, loggers
    messages = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(m.startswith("Starting gunicorn") for m in messages), messages
    assert any(m.startswith("Booting worker") for m in messages), messages
    assert all(line["level"] in ("debug", "info", "warning", "error", "critical") for line in lines)


def test_the_given_id_round_trips(json_run):
    answers, _, _ = json_run
    assert answers["given"][:2] == (200, "given-id.1_A")
    assert answers["not-found"][:2] == (404, "given-404")
    assert answers["stream"][:2] == (200, "stream-id-1")


def test_an_id_is_made_when_none_is_given(json_run):
    answers, _, _ = json_run
    for name in ("generated", "unauthorized", "ingest"):
        assert HEX32.fullmatch(answers[name][1]), answers[name]
    assert answers["unauthorized"][0] == 401 and answers["ingest"][0] == 202


@pytest.mark.parametrize("name", [*(f"hostile-{k}" for k in HOSTILE), "hostile-latin1"])
def test_a_hostile_id_is_replaced_and_never_logged(json_run, name):
    answers, _, raw = json_run
    status, request_id, _ = answers[name]
    assert status == 200
    assert HEX32.fullmatch(request_id), request_id
    assert b"<script>" not in raw and b"forged" not in raw and b"two words" not in raw
    assert b"caf\xe9" not in raw and b"a" * 129 not in raw


def test_each_request_has_one_access_line_with_its_id(json_run):
    answers, lines, _ = json_run
    ids = {request_id for _, request_id, _ in answers.values()}
    assert len(ids) == len(answers), "every request has its own id"
    access = [line for line in access_lines(lines) if line["request_id"] in ids]
    assert len(access) == len(answers), [a["message"] for a in access]
    by_id = {line["request_id"]: line for line in access}
    others = [line for line in access_lines(lines) if line["request_id"] not in ids]
    assert {line["path"] for line in others} <= {"/api/health"}, "the start's health checks"
    for name, (status, request_id, path) in answers.items():
        line = by_id[request_id]
        assert line["status"] == status, (name, line)
        assert line["path"] == path.partition("?")[0], (name, line)
        assert line["method"] == ("POST" if name == "ingest" else "GET"), (name, line)
        assert line["remote_addr"] == "127.0.0.1"
        assert isinstance(line["bytes"], int) and line["bytes"] > 0, (name, line)
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["message"] == f"{line['method']} {line['path']} {status}"
    assert by_id[answers["given"][1]]["user_agent"] == USER_AGENT
    assert by_id[answers["unauthorized"][1]]["query"] == "connectionId=x"


def test_the_apps_own_lines_carry_the_id_of_their_request(redis_url):
    """Redis is down: each ingest logs one error from the app (`sluice`) inside its
    request; many at once, each line names its own request."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ids = [f"concurrent-{i}" for i in range(16)]
    statuses: dict[str, int] = {}
    with running(
        dead,
        SLUICE_ENV="production",
        SECRET_KEY="k" * 64,
        SLUICE_LOG_FORMAT="json",
        SLUICE_ACCESS_LOG="-",
    ) as server:
        barrier = threading.Barrier(len(ids))

        def post(request_id: str) -> None:
            barrier.wait()
            response = requests.post(
                server.url + "/api/ingest",
                json={"events": []},
                headers={"Authorization": "Bearer sk_live_x", "X-Request-ID": request_id},
                timeout=15,
            )
            statuses[response.headers["X-Request-ID"]] = response.status_code

        threads = [threading.Thread(target=post, args=(i,)) for i in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == {i: 503 for i in ids}
    lines = json_lines(server)
    app = [line for line in lines if line["logger"].startswith("sluice")]
    in_requests = [line for line in app if "request_id" in line]
    assert sorted(line["request_id"] for line in in_requests) == sorted(ids), in_requests
    assert all(line["message"].startswith("redis unavailable") for line in in_requests)
    assert all(line["level"] == "error" for line in in_requests)
    access = {line["request_id"]: line["status"] for line in access_lines(lines)}
    assert {i: access.get(i) for i in ids} == {i: 503 for i in ids}


def test_text_stays_human_readable_with_the_id_on_access_lines(redis_url):
    with running(redis_url, SLUICE_ACCESS_LOG="-") as server:
        assert get(server, "/api/health", "text-id-1").headers["X-Request-ID"] == "text-id-1"
    lines = [line.decode() for line in read_lines(server)]
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        assert not isinstance(parsed, dict), line
    assert any(re.search(r"\[\d+\] \[INFO\] Starting gunicorn", line) for line in lines), lines
    (access,) = [line for line in lines if "text-id-1" in line]
    assert '"GET /api/health HTTP/1.1" 200 ' in access
    assert access.endswith(f'"{USER_AGENT.replace(chr(34), chr(92) + chr(34))}" text-id-1')


def test_a_malformed_format_is_refused_at_start_in_one_line(redis_url):
    server = SluiceServer(redis_url, {"SLUICE_LOG_FORMAT": "xml"})
    server.log_path.unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="gunicorn exited"):
        server.start()
    server.stop()
    lines = [line.decode() for line in read_lines(server)]
    refused = [line for line in lines if "Not starting" in line]
    assert len(refused) == 1, lines
    assert refused[0].endswith(
        "Not starting: SLUICE_LOG_FORMAT must be 'text' or 'json', got 'xml'"
    )
