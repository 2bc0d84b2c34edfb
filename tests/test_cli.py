"""`python -m sluice …` as a user runs it: real subprocesses, real Redis, real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import ROOT, free_port
from tests.sse import open_stream
from tests.util import ingest, job_event


def sluice(
    *args: str, redis_url: str | None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "sluice", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def test_help_lists_the_commands():
    out = sluice("--help", redis_url=None).stdout
    for command in ("demo", "create-user", "create-connection", "tail", "celery-agent", "serve"):
        assert command in out


def test_create_user_and_connection(redis_url, server):
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    made = sluice(
        "create-user", email, "--password-stdin", redis_url=redis_url, stdin="a long password\n"
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["email"] == email
    again = sluice(
        "create-user", email, "--password-stdin", redis_url=redis_url, stdin="a long password\n"
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    short = sluice(
        "create-user", "x" + email, "--password-stdin", redis_url=redis_url, stdin="short\n"
    )
    assert short.returncode == 1 and "password" in short.stderr

    created = sluice(
        "create-connection",
        "--user",
        email,
        "Billing workers",
        "--framework",
        "celery",
        redis_url=redis_url,
    )
    assert created.returncode == 0, created.stderr
    connection = json.loads(created.stdout)
    assert set(connection) == {"id", "name", "apiKey"} and connection["name"] == "Billing workers"
    # The printed key really works.
    response = ingest(
        server.url,
        connection["apiKey"],
        connection["id"],
        [job_event(connection["id"], "j", "queued")],
    )
    assert response.status_code == 202
    missing = sluice("create-connection", "--user", "nobody@example.com", "x", redis_url=redis_url)
    assert missing.returncode == 1 and "no user" in missing.stderr


def test_tail_prints_live_events(server, account):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sluice",
            "tail",
            "--url",
            server.url,
            "--api-key",
            account.api_key,
            "--connection",
            account.connection_id,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert "connected" in process.stderr.readline()
        ingest(
            server.url,
            account.api_key,
            account.connection_id,
            [job_event(account.connection_id, "tailed-job", "active")],
        )
        line = json.loads(process.stdout.readline())
        assert line["event"] == "job:state_change"
        assert line["data"]["externalId"] == "tailed-job" and line["id"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_tail_reports_bad_key(server, account):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluice",
            "tail",
            "--url",
            server.url,
            "--api-key",
            "sk_live_wrong",
            "--connection",
            account.connection_id,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 1 and "UNAUTHORIZED" in result.stderr


@pytest.mark.single_node(reason="the demo runs an embedded Valkey of its own")
def test_demo_serves_live_traffic_with_embedded_redis():
    """The README's first command, minus pip: no REDIS_URL, so an embedded server is used."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice", "demo", "--port", str(port), "--rate", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    output = ""
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output += line
        assert "embedded Valkey" in output
        # Read on what the demo writes while it serves: a full pipe would block its logging.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        key = re.search(r"Bearer (sk_live_[\w-]+)", output).group(1)
        connection_id = re.search(r"connectionId=([0-9a-f-]{36})", output).group(1)
        assert re.search(r"Login\s+demo@sluice.dev\s+/\s+\S+", output)
        with open_stream(f"http://127.0.0.1:{port}", connection_id, api_key=key) as stream:
            assert stream.status == 200
            events = stream.data_events(3, timeout=15)
        assert {e.event for e in events} <= {
            "job:state_change",
            "worker:heartbeat",
            "worker:state_change",
            "queue:snapshot",
        }
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def test_user_commands_refuse_without_redis_url():
    """Without REDIS_URL a user would land in a throwaway embedded database: refuse."""
    for args in (
        ("create-user", "nobody@example.com", "--password-stdin"),
        ("create-connection", "--user", "nobody@example.com", "Billing"),
    ):
        result = sluice(*args, redis_url=None, stdin="a long password\n")
        assert result.returncode != 0, result.stdout
        assert "REDIS_URL" in result.stderr and "redis://127.0.0.1:6379/0" in result.stderr
        assert "embedded Valkey server at" not in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_user_commands_name_an_unreachable_redis_in_one_line():
    port = free_port()
    dead = f"redis://:hunter2@127.0.0.1:{port}/0"
    for args in (
        ("create-user", "nobody@example.com", "--password-stdin"),
        ("create-connection", "--user", "nobody@example.com", "Billing"),
    ):
        result = sluice(*args, redis_url=dead, stdin="a long password\n")
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr, result.stderr
        assert "hunter2" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"redis://:***@127.0.0.1:{port}/0" in lines[0] and "REDIS_URL" in lines[0]
