"""The integration (`sluice.celery.install`, `sluice.integrations.celery.integration`)
inside a real (in-process) Celery worker on kombu's memory transport: the
signal handlers' guarantees, without subprocesses.

The capture server is a real HTTP server standing in for /api/ingest.
"""

from __future__ import annotations

import json
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
        worker_hijack_root_logger=False,  # it would remove pytest's log capture
    )

    @app.task(name="inproc.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="inproc.flaky", bind=True, max_retries=3, shared=False)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(countdown=0, exc=RuntimeError(f"attempt {self.request.retries + 1}"))
        return "ok"

    @app.task(name="inproc.boom", shared=False)
    def boom(message):
        raise ValueError("no luck")  # the message stays out of the error: see the capture tests

    @app.task(name="inproc.login", shared=False)
    def login(user, password=None):
        return f"{user} logged in: {password == 'hunter2'}"

    return app


def jobs(events: list[dict], task_id: str) -> list[tuple[str, int]]:
    return [
        (e["job"]["state"], e["job"]["attempt"])
        for e in events
        if e["type"] == "job_state_change" and e["job"]["externalId"] == task_id
    ]


def collapsed(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Repeats in a row dropped (a task's `queued` published, then received)."""
    return [p for i, p in enumerate(pairs) if i == 0 or pairs[i - 1] != p]


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
        # The publisher's `queued` and the worker's (`queued` held by that worker),
        # sent by two threads: in either order.
        assert jobs(events, ok) == [("queued", 1), ("queued", 1), ("active", 1), ("completed", 1)]
        held = [
            e["job"].get("workerId")
            for e in events
            if e["type"] == "job_state_change" and e["job"]["externalId"] == ok
        ]
        assert None in held[:2] and any(held[:2])
        assert collapsed(jobs(events, flaky)) == [
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


# -- what a person debugs with: argument and result reprs, tracebacks -----------------

SECRET = "hunter2"


def posted(capture) -> list[dict]:
    """Every job event posted, duplicates included (the publisher's and the worker's
    `queued` share an id: the server keeps one, but both were sent)."""
    return [e for batch in capture.batches for e in batch if e["type"] == "job_state_change"]


def of(events: list[dict], task_id: str, state: str) -> list[dict]:
    return [
        e["job"] for e in events if e["job"]["externalId"] == task_id and e["job"]["state"] == state
    ]


def run_debug_tasks(app: Celery, capture) -> dict[str, str]:
    """A login with the secret as an argument, one as a keyword argument, and a failure."""
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        ids = {
            "args": app.tasks["inproc.login"].delay("bob", SECRET).id,
            "kwargs": app.tasks["inproc.login"].delay("ann", password=SECRET).id,
            "boom": app.tasks["inproc.boom"].delay(f"message {SECRET}").id,
        }
        done = {"args": "completed", "kwargs": "completed", "boom": "failed"}
        capture.wait_for(
            lambda events: all(
                any(
                    e["job"]["externalId"] == ids[k] and e["job"]["state"] == s
                    for e in events
                    if e["type"] == "job_state_change"
                )
                for k, s in done.items()
            ),
            timeout=20,
        )
    return ids


def test_arguments_result_and_traceback_are_sent_as_celerys_reprs(capture):
    app = make_app()
    integ = sluice.celery.install(app, url=capture.url, api_key="k", connection_id=CONN)
    try:
        ids = run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    events = posted(capture)
    signals = {
        j["extensions"]["celerySignal"]: j["extensions"]
        for j in of(events, ids["kwargs"], "queued")
    }
    # Published and received alike: Celery's argsrepr/kwargsrepr, as in its own events.
    assert set(signals) == {"after_task_publish", "task_received"}
    for ext in signals.values():
        assert ext["args"] == "('ann',)" and ext["kwargs"] == "{'password': 'hunter2'}"
    for ext in (j["extensions"] for j in of(events, ids["args"], "queued")):
        assert ext["args"] == "('bob', 'hunter2')" and ext["kwargs"] == "{}"
    # The result is Celery's saferepr, as in task-succeeded (a str is quoted).
    (done,) = of(events, ids["args"], "completed")
    assert done["extensions"]["result"] == "'bob logged in: True'"
    (failed,) = of(events, ids["boom"], "failed")
    assert failed["error"] == "ValueError: no luck"
    assert failed["stacktrace"].startswith("Traceback (most recent call last)")
    assert 'raise ValueError("no luck")' in failed["stacktrace"]


def test_capture_args_false_sends_no_argument_or_result_repr(capture):
    app = make_app()
    integ = sluice.celery.install(
        app, url=capture.url, api_key="k", connection_id=CONN, capture_args=False
    )
    try:
        ids = run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    assert SECRET not in json.dumps(capture.batches)
    assert "logged in" not in json.dumps(capture.batches)  # the results neither
    events = posted(capture)
    assert all(
        not {"args", "kwargs", "result"} & set(e["job"].get("extensions", {})) for e in events
    )
    (failed,) = of(events, ids["boom"], "failed")  # the failure is still there to debug
    assert failed["error"] == "ValueError: no luck" and "Traceback" in failed["stacktrace"]


def test_capture_args_comes_from_the_environment(capture, monkeypatch, caplog):
    for value, expected in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("SLUICE_CAPTURE_ARGS", value)
        integ = sluice.celery.install(make_app(), url=capture.url, api_key="k", connection_id=CONN)
        try:
            assert integ.capture_args is expected, value
        finally:
            integ.uninstall()
    # An argument wins over the environment; a value that is not yes/no is off, and said.
    integ = sluice.celery.install(
        make_app(), url=capture.url, api_key="k", connection_id=CONN, capture_args=True
    )
    integ.uninstall()
    assert integ.capture_args is True
    monkeypatch.setenv("SLUICE_CAPTURE_ARGS", "nope")
    with caplog.at_level(logging.ERROR, logger="sluice.celery"):
        integ = sluice.celery.install(make_app(), url=capture.url, api_key="k", connection_id=CONN)
    integ.uninstall()
    assert integ.capture_args is False and "SLUICE_CAPTURE_ARGS='nope'" in caplog.text


def test_the_redact_hook_chooses_what_of_the_arguments_is_sent(capture):
    calls: list[tuple[str, tuple, dict]] = []

    def redact(name, args, kwargs):
        calls.append((name, args, dict(kwargs)))
        if "password" in kwargs:
            kwargs["password"] = "***"  # in place: the task still gets the real one
        return tuple(a.replace(SECRET, "***") if isinstance(a, str) else a for a in args), kwargs

    app = make_app()
    integ = sluice.celery.install(
        app, url=capture.url, api_key="k", connection_id=CONN, redact=redact
    )
    try:
        ids = run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    assert SECRET not in json.dumps([e for e in posted(capture) if e["job"]["state"] == "queued"])
    events = posted(capture)
    for ext in (j["extensions"] for j in of(events, ids["kwargs"], "queued")):
        assert ext["args"] == "('ann',)" and ext["kwargs"] == "{'password': '***'}"
    for ext in (j["extensions"] for j in of(events, ids["args"], "queued")):
        assert ext["args"] == "('bob', '***')"
    # The tasks ran with the real values (the hook got copies).
    assert of(events, ids["kwargs"], "completed")[0]["extensions"]["result"] == (
        "'ann logged in: True'"
    )
    # Called where each message is published and where it is received, with the task's name.
    assert sorted(c[0] for c in calls) == sorted(["inproc.login"] * 4 + ["inproc.boom"] * 2), calls
    assert ("inproc.login", ("ann",), {"password": SECRET}) in calls


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda name, args, kwargs: 1 / 0, id="raises"),
        pytest.param(lambda name, args, kwargs: "ab", id="not-a-pair"),
    ],
)
def test_a_failing_redact_hook_sends_nothing_of_the_arguments_and_logs_once(capture, caplog, hook):
    app = make_app()
    integ = sluice.celery.install(
        app, url=capture.url, api_key="k", connection_id=CONN, redact=hook
    )
    try:
        with caplog.at_level(logging.DEBUG, logger="sluice.celery"):
            ids = run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    events = posted(capture)
    assert all(not {"args", "kwargs"} & set(e["job"].get("extensions", {})) for e in events)
    failures = [r for r in caplog.records if "redact hook failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR] + [logging.DEBUG] * 5
    # The tasks ran as always; their outcome (result, traceback) is still sent.
    assert of(events, ids["args"], "completed")[0]["extensions"]["result"] == (
        "'bob logged in: True'"
    )
    assert "Traceback" in of(events, ids["boom"], "failed")[0]["stacktrace"]


def test_a_redact_hook_returning_none_sends_no_arguments(capture, caplog):
    app = make_app()
    integ = sluice.celery.install(
        app, url=capture.url, api_key="k", connection_id=CONN, redact=lambda *a: None
    )
    try:
        with caplog.at_level(logging.DEBUG, logger="sluice.celery"):
            run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    assert SECRET not in json.dumps(capture.batches)
    assert all(
        not {"args", "kwargs"} & set(e["job"].get("extensions", {})) for e in posted(capture)
    )
    assert "redact hook failed" not in caplog.text


def test_capture_off_wins_over_a_redact_hook_and_a_bad_hook_turns_capture_off(capture, caplog):
    called: list[str] = []
    app = make_app()
    integ = sluice.celery.install(
        app,
        url=capture.url,
        api_key="k",
        connection_id=CONN,
        capture_args=False,
        redact=lambda name, a, k: called.append(name) or (a, k),
    )
    try:
        run_debug_tasks(app, capture)
    finally:
        integ.uninstall()
    assert called == [] and SECRET not in json.dumps(capture.batches)
    with caplog.at_level(logging.ERROR, logger="sluice.celery"):
        integ = sluice.celery.install(
            make_app(), url=capture.url, api_key="k", connection_id=CONN, redact="nope"
        )
    integ.uninstall()
    assert integ.capture_args is False and "not callable" in caplog.text


def test_capture_call_puts_the_real_call_on_failed_and_retrying_events_only(capture):
    app = make_app()
    integ = sluice.celery.install(
        app, url=capture.url, api_key="k", connection_id=CONN, capture_call=True
    )
    try:
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
            boom = app.tasks["inproc.boom"].delay("a message").id
            flaky = app.tasks["inproc.flaky"].delay().id
            ok = app.tasks["inproc.login"].delay("ann", password="x").id

            def finished(events):
                return (
                    ("failed", 1) in jobs(events, boom)
                    and ("completed", 3) in jobs(events, flaky)
                    and ("completed", 1) in jobs(events, ok)
                )

            capture.wait_for(finished, timeout=20)
    finally:
        integ.uninstall()
    events = posted(capture)
    (failed,) = of(events, boom, "failed")
    assert failed["extensions"]["call"] == {"args": ["a message"], "kwargs": {}}
    retrying = of(events, flaky, "retrying")
    assert len(retrying) == 2
    assert all(j["extensions"]["call"] == {"args": [], "kwargs": {}} for j in retrying)
    # Only where a retry may be asked for: never on queued, active or completed events.
    for task_id in (boom, flaky, ok):
        for j in (e["job"] for e in events if e["job"]["externalId"] == task_id):
            if j["state"] not in ("failed", "retrying", "cancelled"):
                assert "call" not in j.get("extensions", {}), j


def test_capture_call_is_off_by_default_from_the_environment_and_without_capture(
    capture, monkeypatch, caplog
):
    def installed(**kw):
        integ = sluice.celery.install(
            make_app(), url=capture.url, api_key="k", connection_id=CONN, **kw
        )
        integ.uninstall()
        return integ.capture_call

    assert installed() is False
    monkeypatch.setenv("SLUICE_CAPTURE_CALL", "1")
    assert installed() is True
    assert installed(capture_call=False) is False
    # Never without argument capture, nor with a redact hook (it would send what it hides).
    assert installed(capture_args=False) is False
    with caplog.at_level(logging.WARNING, logger="sluice.celery"):
        assert installed(redact=lambda name, args, kwargs: (args, {})) is False
    assert "capture_call is off: a redact hook is set" in caplog.text
