"""Real moving parts for the Celery tests: brokers, `celery worker` and agent
subprocesses, a publisher app, and a collector over the real SSE stream."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from ..sse import open_stream
from ..util import wait_until  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
RABBIT_URL = os.environ.get("SLUICE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def redis_broker_url(redis_url: str, db: int = 1) -> str:
    """The test Redis, another db: Celery's keys never meet the server's."""
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def rabbitmq_unavailable() -> str | None:
    """Why RabbitMQ tests cannot run here, or None when a broker answers."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
    except OSError as exc:
        return f"no RabbitMQ at 127.0.0.1:5672 ({exc}); start one (guest/guest) to run these"
    try:
        from kombu import Connection

        with Connection(RABBIT_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at 127.0.0.1:5672 refused {RABBIT_URL} ({exc})"
    return None


class Proc:
    """A subprocess whose output goes to a log file under test-artifacts/."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.cmd = cmd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> Proc:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def output(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        def seen():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.cmd[:4]} exited {self.process.returncode}:\n{self.output()[-3000:]}"
                )
            return text in self.output()

        try:
            wait_until(seen, timeout, f"{text!r} in {self.log_path}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log tail ---\n{self.output()[-3000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class CeleryWorker(Proc):
    """`celery -A tests.celery.celeryapp worker` on its own queue and node name."""

    def __init__(
        self,
        broker: str,
        queue: str,
        *,
        pool: str = "prefork",
        events: bool = True,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = f"w{uuid.uuid4().hex[:8]}"
        self.nodename = f"{self.name}@{socket.gethostname()}"
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.celery.celeryapp", "worker",
            "-P", pool, "-c", "2", "-n", f"{self.name}@%h", "-Q", queue,
            "--heartbeat-interval", "1", "--without-mingle", "--without-gossip", "-l", "INFO",
        ]  # fmt: skip
        if events:
            cmd.append("-E")
        cmd.extend(extra_args)
        super().__init__(
            f"celery-{self.name}-{pool}",
            cmd,
            {"TEST_BROKER_URL": broker, "TEST_QUEUE": queue, **(env or {})},
        )

    def start(self, wait: bool = True) -> CeleryWorker:
        super().start()
        if wait:
            self.wait_for_output(" ready.", timeout=30)
        return self


class Agent(Proc):
    """`python -m sluice celery-agent` as a user runs it."""

    def __init__(
        self, broker: str, url: str, account, *args: str, with_connection: bool = True
    ) -> None:
        """`with_connection=False`: no `--connection`, the key alone (GET /api/key)."""
        connection = ["--connection", account.connection_id] if with_connection else []
        cmd = [
            sys.executable, "-m", "sluice", "celery-agent", "--broker", broker, "--url", url,
            "--api-key", account.api_key, *connection,
            "--poll-interval", "0.5", "--log-level", "DEBUG", *args,
        ]  # fmt: skip
        super().__init__(f"agent-{uuid.uuid4().hex[:8]}", cmd, {})

    def start(self, wait: bool = True) -> Agent:
        super().start()
        if wait:
            self.wait_for_output("capturing events", timeout=30)
        return self


def integration_env(
    server, account, *, heartbeat: str | None = "0.5", connection: bool = False, **extra: str
) -> dict[str, str]:
    """The environment of a worker running the in-worker integration
    (tests/celery/celeryapp.py installs it) against `server` with `account`'s key:
    heartbeats `heartbeat` seconds apart (None: the default), the connection id
    given too when `connection` (else the key alone says it), and `extra`."""
    env = {"TEST_SLUICE_INSTALL": "1", "SLUICE_URL": server.url, "SLUICE_API_KEY": account.api_key}
    if connection:
        env["SLUICE_CONNECTION_ID"] = account.connection_id
    if heartbeat is not None:
        env["SLUICE_HEARTBEAT_INTERVAL"] = heartbeat
    return {**env, **extra}


def publisher(broker: str, queue: str):
    """A Celery app in the test process that publishes to `queue` (task-sent events on)."""
    from celery import Celery

    app = Celery("sluice_test_publisher", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        result_backend=None,
    )
    return app


def cleanup_broker(broker: str, queue: str) -> None:
    """Remove what the test left on a shared broker (its queue, its bindings)."""
    from kombu import Connection

    try:
        with Connection(broker, connect_timeout=3) as conn:
            channel = conn.default_channel
            if conn.transport.driver_type == "redis":
                client = channel.client
                for pri in channel.priority_steps:
                    client.delete(channel._q_for_pri(queue, pri))
                client.delete(channel.keyprefix_queue % queue)
                permanent = getattr(channel, "keyprefix_binding_permanent", None)
                if permanent:  # kombu 5.6+
                    client.delete(permanent % queue)
            else:
                channel.queue_delete(queue)
    except Exception:
        pass


class Collector:
    """Reads a connection's real SSE stream and keeps every data event's JSON."""

    def __init__(self, base_url: str, account, **kwargs) -> None:
        self.stream = open_stream(
            base_url, account.connection_id, api_key=account.api_key, timeout=10, **kwargs
        )
        assert self.stream.status == 200, self.stream.status
        self.events: list[tuple[str, str | None, dict]] = []  # (event name, sse id, data)

    def wait(self, predicate, timeout: float = 20, what: str = "events") -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(f"{n} {d}" for n, _, d in self.events[-15:])
                raise AssertionError(f"timed out waiting for {what}; last events:\n{tail}")
            try:
                event = self.stream.next_event(timeout=min(remaining, 2))
            except TimeoutError:
                continue
            if event.id is not None:
                self.events.append((event.event, event.id, event.json()))
        return self.events

    def jobs(self, external_id: str) -> list[dict]:
        return [
            d
            for n, _, d in self.events
            if n == "job:state_change" and d["externalId"] == external_id
        ]

    def states(self, external_id: str) -> list[str]:
        return [d["state"] for d in self.jobs(external_id)]

    def has_state(self, external_id: str, state: str) -> bool:
        return state in self.states(external_id)

    def workers(self, nodename: str) -> list[tuple[str, dict]]:
        return [
            (n, d)
            for n, _, d in self.events
            if n.startswith("worker:") and d.get("externalId") == nodename
        ]

    def queues(self, name: str) -> list[dict]:
        return [d for n, _, d in self.events if n == "queue:snapshot" and d["name"] == name]

    def close(self) -> None:
        self.stream.close()


_NO_RABBIT = rabbitmq_unavailable()
#: Parametrisation of the agent tests: Redis always, RabbitMQ where one answers.
BROKERS = [
    "redis",
    pytest.param("rabbitmq", marks=pytest.mark.skipif(bool(_NO_RABBIT), reason=_NO_RABBIT or "")),
]


def broker_for(kind: str, redis_url: str) -> str:
    return RABBIT_URL if kind == "rabbitmq" else redis_broker_url(redis_url)
