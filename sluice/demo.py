"""`python -m sluice demo`: the service with a demo account and live synthetic traffic.

The synthetic producer goes through the real ingest API, so what the demo
shows is exactly what a Celery deployment would produce.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click
import requests

from .process import die_with_parent
from .store.client import RedisUnavailable, check_reachable, connect
from .store.embedded import start_embedded, stop_embedded
from .timefmt import now_iso

DEMO_EMAIL = "demo@sluice.dev"
DEMO_CONNECTION = "Demo Celery cluster"
TASKS = (
    "app.tasks.send_email",
    "app.tasks.resize_image",
    "billing.tasks.charge_card",
    "reports.tasks.build_daily_report",
    "search.tasks.reindex_document",
)
QUEUES = ("default", "emails", "billing")


def gunicorn_command() -> list[str]:
    """gunicorn with Sluice's settings and app, from the installed package (any directory)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:sluice.gunicorn_conf",
        "sluice.wsgi:app",
    ]


def demo_account(redis_url: str) -> tuple[str, str, str, str]:
    """(email, password, connection id, api key): a fresh password and key each run."""
    from .store import connections, users

    r = connect(redis_url)
    password = secrets.token_urlsafe(9)
    user_id = users.find_user_id(r, DEMO_EMAIL)
    if user_id is None:
        user_id = users.create_user(r, DEMO_EMAIL, password)["id"]
    else:
        users.set_password(r, user_id, password)
    connection_id = connections.find_by_name(r, user_id, DEMO_CONNECTION)
    if connection_id is not None:
        return DEMO_EMAIL, password, connection_id, connections.rotate_api_key(r, connection_id)
    created = connections.create_connection(r, user_id, DEMO_CONNECTION, "celery")
    return DEMO_EMAIL, password, created["id"], created["apiKey"]


def wait_healthy(base_url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("the server exited during start-up; see its log above")
        try:
            if requests.get(base_url + "/api/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the server did not become healthy within {timeout:.0f}s")


class Stop(BaseException):
    """A signal asked the demo to stop (SIGTERM, or SIGHUP: its terminal went away)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signum)


def _ignore(signum: int, frame: object) -> None:
    """While stopping: a second Ctrl-C must not cut the stop short and orphan a child."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_demo(
    *,
    redis_url: str | None,
    host: str,
    port: int,
    workers: int,
    rate: float,
    traffic: bool,
) -> None:
    """Serve the demo until a signal (or an error) ends it; `redis_url` None: embedded Valkey.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all stop it the same way:
    gunicorn first (SIGTERM: it drains the streams), then the embedded Valkey.
    Both children sit in process groups of their own, so a terminal's Ctrl-C
    or hang-up reaches only the demo, and both die with the demo even if it
    is SIGKILLed (see `die_with_parent`).
    """
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    # Ctrl-C stops the demo even when its parent ignored SIGINT (a background job
    # of a script, `nohup … &`): Python keeps an inherited "ignore" as it is.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    embedded = redis_url is None
    server: subprocess.Popen | None = None
    try:
        if redis_url is None:
            redis_url = start_embedded()
        else:
            try:
                check_reachable(redis_url)
            except RedisUnavailable as exc:
                raise click.ClickException(str(exc)) from None
        email, password, connection_id, api_key = demo_account(redis_url)
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            PORT=str(port),
            HOST=host,
            WEB_CONCURRENCY=str(workers),
        )
        env.setdefault("SLUICE_INGEST_RATE_LIMIT", "1000 per second")
        server = subprocess.Popen(
            gunicorn_command(), env=env, preexec_fn=die_with_parent(signal.SIGTERM)
        )
        base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        wait_healthy(base_url, server)
        click.echo(
            f"""
  Sluice demo is running.

  Dashboard   {base_url}/connections/{connection_id}
  Login       {email}  /  {password}
  Connection  {connection_id}
  API key     {api_key}

  Watch the raw stream:
    curl -N -H 'Authorization: Bearer {api_key}' \\
      '{base_url}/api/events/stream?connectionId={connection_id}'

  Or: python -m sluice tail --url {base_url} --api-key {api_key} --connection {connection_id}

  Synthetic traffic: {f"{rate:.0f} events/s" if traffic else "off"}. Ctrl-C stops everything.
""",
            err=False,
        )
        if traffic:
            Producer(base_url, api_key, connection_id, rate).run(lambda: server.poll() is None)
        else:
            server.wait()
    except (KeyboardInterrupt, Stop):
        pass
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _ignore)
        try:
            if server is not None:
                stop_server(server)
            if embedded:
                stop_embedded()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def stop_server(server: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (gunicorn's graceful stop, which drains the streams), then kill."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Producer:
    """Synthetic Celery-like traffic: jobs through their states, workers, queues."""

    def __init__(self, base_url: str, api_key: str, connection_id: str, rate: float) -> None:
        self.url = base_url + "/api/ingest"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.connection_id = connection_id
        self.rate = max(rate, 0.5)
        self.rng = random.Random()
        self.workers: dict[str, dict[str, Any]] = {
            f"celery@worker-{i}": {"state": "online", "active": 0} for i in range(1, 4)
        }
        self.jobs: dict[str, dict] = {}
        self.depth = {q: self.rng.randint(0, 20) for q in QUEUES}
        self.tick = 0

    def _event(self, kind: str, key: str, payload: dict) -> dict:
        return {
            "id": str(uuid.uuid4()),
            "type": kind,
            "timestamp": now_iso(),
            "framework": "celery",
            "connectionId": self.connection_id,
            key: payload,
        }

    def _job(self, job: dict, state: str, **extra: object) -> dict:
        previous, job["state"] = job["state"], state
        payload = {
            "externalId": job["externalId"],
            "name": job["name"],
            "state": state,
            "previousState": previous,
            "queue": job["queue"],
            "attempt": job["attempt"],
            "maxRetries": 3,
            **extra,
        }
        if job.get("worker"):
            payload["workerId"] = job["worker"]
        return self._event("job_state_change", "job", payload)

    def step(self) -> list[dict]:
        """One tick of the simulation: a handful of events."""
        rng, events = self.rng, []
        self.tick += 1
        if len(self.jobs) < 40 and rng.random() < 0.7:
            job: dict[str, Any] = {
                "externalId": str(uuid.uuid4()),
                "name": rng.choice(TASKS),
                "queue": rng.choice(QUEUES),
                "state": None,
                "attempt": 1,
                "createdAt": now_iso(),
            }
            self.jobs[job["externalId"]] = job
            self.depth[job["queue"]] += 1
            state = "scheduled" if rng.random() < 0.1 else "queued"
            events.append(self._job(job, state, createdAt=job["createdAt"]))
        for job in list(self.jobs.values()):
            if rng.random() > 0.35:
                continue
            if job["state"] in ("queued", "scheduled", "retrying"):
                online = [w for w, s in self.workers.items() if s["state"] != "offline"]
                if not online:
                    continue
                job["worker"] = rng.choice(online)
                self.workers[job["worker"]]["active"] += 1
                self.depth[job["queue"]] = max(0, self.depth[job["queue"]] - 1)
                job["startedAt"] = now_iso()
                events.append(self._job(job, "active", startedAt=job["startedAt"]))
            elif job["state"] == "active":
                self.workers[job["worker"]]["active"] = max(
                    0, self.workers[job["worker"]]["active"] - 1
                )
                processed = self.workers[job["worker"]].get("processed", 0)
                self.workers[job["worker"]]["processed"] = processed + 1
                roll = rng.random()
                if roll < 0.08 and job["attempt"] <= 3:
                    job["attempt"] += 1
                    self.depth[job["queue"]] += 1
                    events.append(
                        self._job(job, "retrying", error="ConnectionError: upstream timed out")
                    )
                elif roll < 0.13:
                    events.append(
                        self._job(
                            job,
                            "failed",
                            error="ValueError: invalid recipient address",
                            stacktrace='Traceback (most recent call last):\n  File "app/tasks.py", line 42, in send_email\nValueError: invalid recipient address',
                            finishedAt=now_iso(),
                        )
                    )
                    del self.jobs[job["externalId"]]
                else:
                    events.append(self._job(job, "completed", progress=1.0, finishedAt=now_iso()))
                    del self.jobs[job["externalId"]]
        if self.tick % 10 == 0:
            for name, worker in self.workers.items():
                if worker["state"] == "offline":
                    continue
                state = "busy" if worker["active"] else "idle"
                events.append(
                    self._event(
                        "worker_heartbeat",
                        "worker",
                        {
                            "externalId": name,
                            "hostname": name,
                            "state": state,
                            "activeJobs": worker["active"],
                            "concurrency": 4,
                            "queues": list(QUEUES),
                            "pool": "prefork",
                            "processed": worker.get("processed", 0),
                            "registered": sorted(TASKS),
                        },
                    )
                )
            for queue, depth in self.depth.items():
                events.append(
                    self._event(
                        "queue_snapshot", "queue", {"name": queue, "depth": depth, "consumers": 3}
                    )
                )
        if self.tick % 150 == 0:
            name = rng.choice(list(self.workers))
            worker = self.workers[name]
            previous = worker["state"]
            worker["state"] = "online" if previous == "offline" else "offline"
            worker["active"] = 0
            events.append(
                self._event(
                    "worker_state_change",
                    "worker",
                    {
                        "externalId": name,
                        "hostname": name,
                        "state": worker["state"],
                        "previousState": previous,
                    },
                )
            )
        return events

    def run(self, keep_going: Callable[[], bool]) -> None:
        pending: list[dict] = []
        interval = 0.1
        while keep_going():
            started = time.monotonic()
            budget = max(1, int(self.rate * interval))
            while len(pending) < budget:
                pending.extend(self.step())
            batch, pending = pending[:budget], pending[budget:]
            try:
                response = self.session.post(self.url, json={"events": batch}, timeout=5)
                if response.status_code >= 400:
                    click.echo(
                        f"ingest answered {response.status_code}: {response.text[:200]}", err=True
                    )
            except requests.RequestException as exc:
                click.echo(f"ingest failed: {exc}", err=True)
                time.sleep(1)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
