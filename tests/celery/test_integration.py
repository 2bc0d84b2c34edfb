"""The integration (`sluice.celery.install`, `sluice.integrations.celery.integration`)
inside a real (in-process) Celery worker on kombu's memory transport: the
signal handlers' guarantees, without subprocesses.

The capture server is a real HTTP server standing in for /api/ingest.
"""

from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from celery import Celery  # noqa: E402
from celery.contrib.testing.worker import start_worker  # noqa: E402

import sluice.celery  # noqa: E402
import sluice.integrations.celery  # noqa: E402

from .checks import heavy_imports  # noqa: E402

CONN = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


def make_app() -> Celery:
    app = Celery(f"inproc{time.monotonic_ns()}", broker="memory://", set_as_current=False)
    app.conf.update(
        result_backend=None,
        task_ignore_result=True,
        broker_transport_options={"polling_interval": 0.01},
    )

    @app.task(name="inproc.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="inproc.flaky", bind=True, max_retries=3, shared=False)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(countdown=0, exc=RuntimeError(f"attempt {self.request.retries + 1}"))
        return "ok"

    return app


def jobs(events: list[dict], task_id: str) -> list[tuple[str, int]]:
    return [
        (e["job"]["state"], e["job"]["attempt"])
        for e in events
        if e["type"] == "job_state_change" and e["job"]["externalId"] == task_id
    ]


def test_signals_from_publisher_and_worker(capture):
    app = make_app()
    integ = sluice.celery.install(app, url=capture.url, api_key="sk_live_t", connection_id=CONN)
    try:
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
            ok = app.tasks["inproc.add"].delay(1, 2).id
            flaky = app.tasks["inproc.flaky"].delay().id
            later = app.tasks["inproc.add"].apply_async((0, 0), countdown=30).id

            def finished(events):
                return ("completed", 1) in jobs(events, ok) and ("completed", 3) in jobs(
                    events, flaky
                )

            events = capture.wait_for(finished, timeout=20)
        assert jobs(events, ok) == [("queued", 1), ("active", 1), ("completed", 1)]
        # The publisher's and the worker's `queued` share one id: the server keeps one.
        assert jobs(events, flaky) == [
            ("queued", 1), ("active", 1), ("retrying", 1),
            ("queued", 2), ("active", 2), ("retrying", 2),
            ("queued", 3), ("active", 3), ("completed", 3),
        ]  # fmt: skip
        assert jobs(events, later)[0] == ("scheduled", 1)
        done = next(
            e
            for e in events
            if e["job" if "job" in e else "type"] and e.get("job", {}).get("state") == "completed"
        )
        assert done["connectionId"] == CONN and done["framework"] == "celery"
        assert done["job"]["extensions"]["celerySignal"] == "task_success"
        assert capture.auth[0] == "Bearer sk_live_t"
    finally:
        integ.uninstall()


def run_tasks(app: Celery, count: int) -> float:
    """Seconds for `count` tasks to run through an in-process threads worker."""
    from celery import signals

    done: list[str] = []

    def on_postrun(task_id=None, **kw):
        done.append(task_id)

    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid="inproc-count")
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            started = time.monotonic()
            for i in range(count):
                app.tasks["inproc.add"].delay(i, i)
            deadline = started + 30
            while len(done) < count and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(done) == count
            return time.monotonic() - started
    finally:
        signals.task_postrun.disconnect(dispatch_uid="inproc-count")


def test_a_dead_sluice_neither_blocks_nor_breaks_tasks():
    baseline = run_tasks(make_app(), 300)
    app = make_app()
    # Nothing listens on port 9: every post fails; the sender backs off in its own thread.
    integ = sluice.celery.install(
        app, url="http://127.0.0.1:9", api_key="k", connection_id=CONN, buffer_size=50
    )
    integ.shutdown_flush_seconds = 0.2  # nothing will ever be delivered: don't wait for it
    try:
        elapsed = run_tasks(app, 300)
        sender = integ.sender
        assert sender.stats.submitted >= 300 * 3  # queued, active, completed for each task
        assert sender.stats.failed_posts >= 1 and sender.stats.accepted == 0
        assert sender.pending() <= 50 + 200  # the buffer, plus at most one batch in flight
        assert sender.stats.dropped > 0  # oldest dropped, and counted
        assert elapsed < baseline * 3 + 1.0, (elapsed, baseline)
    finally:
        integ.uninstall()


def test_install_without_settings_logs_and_does_nothing(caplog, monkeypatch):
    for name in ("SLUICE_URL", "SLUICE_API_KEY", "SLUICE_CONNECTION_ID"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.ERROR, logger="sluice.celery"):
        assert sluice.celery.install(make_app()) is None
    assert "SLUICE_URL" in caplog.text


def test_install_reads_the_environment_and_is_idempotent(capture, monkeypatch):
    monkeypatch.setenv("SLUICE_URL", capture.url)
    monkeypatch.setenv("SLUICE_API_KEY", "sk_live_env")
    monkeypatch.setenv("SLUICE_CONNECTION_ID", CONN)
    app = make_app()
    first = sluice.celery.install(app)
    try:
        assert first is not None and sluice.celery.install(app) is first
        assert first.sender.url == capture.url and first.connection_id == CONN
    finally:
        first.uninstall()


def test_sluice_celery_is_the_integrations_install_and_imports_nothing_heavy():
    assert sluice.celery.install is sluice.integrations.celery.install
    assert sluice.celery.SluiceCelery is sluice.integrations.celery.SluiceCelery
    # Celery workers import it: Celery comes with `install`, the server's packages never.
    assert heavy_imports("sluice.celery") == set()
