"""The agent's state (`CeleryEventMapper`): Celery event dicts → ingest events,
fed with events built by Celery's own `Event()`.

Every ingest event produced here is also checked against the server's own
validator (`sluice.schema.validate_batch`), so a mapping the server would
reject fails here first.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from celery.events import Event  # noqa: E402

from sluice.integrations.celery import mapping  # noqa: E402
from sluice.integrations.celery.state import CeleryEventMapper  # noqa: E402

from .checks import CONN, validate  # noqa: E402


def run(mapper: CeleryEventMapper, *events: dict) -> list[dict]:
    out: list[dict] = []
    for event in events:
        out.extend(mapper.map(event))
    validate(out)
    return out


def states(out: list[dict]) -> list[str]:
    return [e["job"]["state"] for e in out if e["type"] == "job_state_change"]


#: (state, attempt) of a task that fails twice, is retried each time, then completes.
TWO_RETRIES_THEN_DONE = [
    ("queued", 1), ("active", 1), ("retrying", 1),
    ("queued", 2), ("active", 2), ("retrying", 2),
    ("queued", 3), ("active", 3), ("completed", 3),
]  # fmt: skip


def attempts(out: list[dict]) -> list[tuple[str, int]]:
    return [(e["job"]["state"], e["job"]["attempt"]) for e in out]


def messages(task_id: str, name: str):
    """sent(n), received(n): the task-sent and task-received of the message of retry n."""

    def sent(n):
        return Event("task-sent", uuid=task_id, name=name, retries=n, eta=None, queue="c")

    def received(n):
        return Event("task-received", uuid=task_id, name=name, retries=n, eta=None)

    return sent, received


def test_success_lifecycle_keeps_name_queue_worker_and_one_external_id():
    m = CeleryEventMapper(CONN)
    t0 = time.time()
    out = run(
        m,
        Event(
            "task-sent",
            uuid="t1",
            name="app.add",
            args="(1, 2)",
            kwargs="{}",
            retries=0,
            eta=None,
            queue="emails",
            exchange="",
            routing_key="emails",
            timestamp=t0,
        ),
        Event(
            "task-received",
            uuid="t1",
            name="app.add",
            args="(1, 2)",
            kwargs="{}",
            retries=0,
            eta=None,
            hostname="celery@web-1",
            timestamp=t0 + 0.1,
        ),
        Event("task-started", uuid="t1", hostname="celery@web-1", pid=42, timestamp=t0 + 0.2),
        Event(
            "task-succeeded",
            uuid="t1",
            result="3",
            runtime=0.01,
            hostname="celery@web-1",
            timestamp=t0 + 0.3,
        ),
    )
    # task-received after task-sent: still `queued`, now held (reserved) by its worker.
    assert states(out) == ["queued", "queued", "active", "completed"]
    assert "workerId" not in out[0]["job"] and out[1]["job"]["workerId"] == "celery@web-1"
    assert {e["job"]["externalId"] for e in out} == {"t1"}
    assert all(e["job"]["name"] == "app.add" for e in out)
    assert [e["job"].get("previousState") for e in out] == [None, "queued", "queued", "active"]
    done = out[-1]["job"]
    assert done["queue"] == "emails" and done["workerId"] == "celery@web-1" and done["attempt"] == 1
    assert done["extensions"]["runtime"] == 0.01 and done["extensions"]["result"] == "3"
    assert done["finishedAt"].endswith("Z") and done["startedAt"] <= done["finishedAt"]
    assert out[0]["framework"] == "celery" and out[0]["connectionId"] == CONN
    assert len({e["id"] for e in out}) == 4
    # A second task-received by the same worker is no change.
    again = Event("task-received", uuid="t1", name="app.add", retries=0, eta=None,
                  hostname="celery@web-1")  # fmt: skip
    assert run(m, again) == []


def test_failure_carries_error_and_tail_of_a_huge_traceback():
    m = CeleryEventMapper(CONN)
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 20_000 + "ValueError: boom"
    out = run(
        m,
        Event(
            "task-received", uuid="t2", name="app.boom", retries=0, eta=None, hostname="celery@w"
        ),
        Event("task-started", uuid="t2", hostname="celery@w"),
        Event(
            "task-failed",
            uuid="t2",
            exception="ValueError('boom' * 5000)" + "x" * 20_000,
            traceback=tb,
            hostname="celery@w",
        ),
    )
    failed = out[-1]["job"]
    assert failed["state"] == "failed"
    assert len(failed["error"]) <= 10_000 and failed["error"].startswith("ValueError('boom")
    assert len(failed["stacktrace"]) <= 50_000 and failed["stacktrace"].endswith("ValueError: boom")


def test_retries_carry_attempts_and_ids_differ_per_attempt():
    m = CeleryEventMapper(CONN)
    evs = [
        Event(
            "task-received", uuid="t3", name="app.flaky", retries=0, eta=None, hostname="celery@w"
        )
    ]
    sent, received = messages("t3", "app.flaky")
    for n in range(2):
        # The order a real worker sends them in: the retry message is published
        # (task-sent, task-received) before task-retried reports the failed attempt.
        evs += [
            Event("task-started", uuid="t3", hostname="celery@w"),
            sent(n + 1),
            received(n + 1),
            Event("task-retried", uuid="t3", exception=f"RuntimeError('attempt {n + 1}')"),
        ]
    evs += [
        Event("task-started", uuid="t3", hostname="celery@w"),
        Event("task-succeeded", uuid="t3", runtime=0.1),
    ]
    out = run(m, *evs)
    jobs = [e["job"] for e in out]
    assert attempts(out) == TWO_RETRIES_THEN_DONE
    assert jobs[2]["error"] == "RuntimeError('attempt 1')"
    assert len({e["id"] for e in out}) == len(out)


def test_retries_of_overlapping_attempts_stay_in_order():
    """Threads pool: attempt 2 runs and retries before attempt 1's task-retried is sent."""
    m = CeleryEventMapper(CONN)
    sent, received = messages("t9", "app.flaky")

    def retried(n):
        return Event("task-retried", uuid="t9", exception=f"RuntimeError('attempt {n}')")

    started = Event("task-started", uuid="t9", hostname="celery@w")
    out = run(
        m,
        sent(0), received(0), started,
        sent(1), received(1), started,
        sent(2), received(2), retried(1), started, retried(2),
        Event("task-succeeded", uuid="t9", runtime=0.1),
    )  # fmt: skip
    assert attempts(out) == TWO_RETRIES_THEN_DONE
    assert [e["job"].get("error") for e in out if e["job"]["state"] == "retrying"] == [
        "RuntimeError('attempt 1')",
        "RuntimeError('attempt 2')",
    ]


def test_retry_message_seen_before_its_attempt_started():
    """RabbitMQ + threads: events straight from pool threads overtake the worker's buffered ones."""
    m = CeleryEventMapper(CONN)
    sent, received = messages("t11", "f")
    started, retried = Event("task-started", uuid="t11"), Event("task-retried", uuid="t11")
    out = run(
        m,
        sent(0), received(0), started, sent(1), received(1), sent(2), started, retried,
        retried, received(2), started, Event("task-succeeded", uuid="t11"),
    )  # fmt: skip
    assert attempts(out) == TWO_RETRIES_THEN_DONE


def test_held_events_are_released_if_task_retried_never_comes():
    m = CeleryEventMapper(CONN)
    run(m, Event("task-received", uuid="t10", name="n", retries=0, eta=None))
    run(m, Event("task-started", uuid="t10"))
    assert run(m, Event("task-received", uuid="t10", name="n", retries=1, eta=None)) == []
    assert m.release_held(hold_seconds=60) == []
    released = m.release_held(hold_seconds=0)
    validate(released)
    assert [(e["job"]["state"], e["job"]["attempt"]) for e in released] == [("queued", 2)]


def test_eta_is_scheduled_and_revoked_is_cancelled_and_rejected_is_failed():
    m = CeleryEventMapper(CONN)
    eta = "2030-01-01T00:00:00+00:00"
    out = run(
        m,
        Event("task-sent", uuid="t4", name="app.later", retries=0, eta=eta, queue="celery"),
        Event(
            "task-received", uuid="t4", name="app.later", retries=0, eta=eta, hostname="celery@w"
        ),
        Event(
            "task-revoked",
            uuid="t4",
            terminated=False,
            signum=None,
            expired=False,
            hostname="celery@w",
        ),
        Event("task-received", uuid="t5", name="app.x", retries=0, eta=None, hostname="celery@w"),
        Event("task-rejected", uuid="t5", requeue=False, hostname="celery@w"),
    )
    assert [(e["job"]["externalId"], e["job"]["state"]) for e in out] == [
        ("t4", "scheduled"),
        ("t4", "scheduled"),  # received: held by celery@w until its ETA
        ("t4", "cancelled"),
        ("t5", "queued"),
        ("t5", "failed"),
    ]
    assert out[0]["job"]["extensions"]["eta"] == eta


def test_stale_queued_after_started_is_dropped_and_ids_are_stable():
    a, b = CeleryEventMapper(CONN), CeleryEventMapper(CONN)
    started = Event("task-started", uuid="t6", hostname="celery@w")
    late = Event("task-sent", uuid="t6", name="app.y", retries=0, eta=None, queue="celery")
    assert states(run(a, started, late)) == ["active"]
    done = run(a, Event("task-succeeded", uuid="t6", runtime=0.1))[0]["job"]
    assert done["queue"] == "celery" and done["name"] == "app.y"  # learnt from the late event
    # The same meaning gives the same producer id in another process (agent restart, integration).
    first = run(b, Event("task-received", uuid="t7", name="n", retries=0, eta=None))[0]
    again = CeleryEventMapper(CONN).map(
        Event("task-sent", uuid="t7", name="n", retries=0, eta=None)
    )[0]
    assert first["id"] == again["id"]


def test_worker_online_heartbeats_offline_and_silent_worker_expiry():
    m = CeleryEventMapper(CONN, worker_timeout=0.05)
    sw = {"sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "freq": 1.0}
    out = run(
        m,
        Event("worker-online", hostname="celery@web-1", pid=7, **sw),
        Event(
            "worker-heartbeat", hostname="celery@web-1", active=2, processed=5, pid=7, clock=1, **sw
        ),
        Event(
            "worker-heartbeat", hostname="celery@web-1", active=0, processed=7, pid=7, clock=2, **sw
        ),
        Event("worker-offline", hostname="celery@web-1", pid=7, **sw),
    )
    assert [(e["type"], e["worker"]["state"]) for e in out] == [
        ("worker_state_change", "online"),
        ("worker_heartbeat", "busy"),
        ("worker_heartbeat", "idle"),
        ("worker_state_change", "offline"),
    ]
    assert out[1]["worker"]["activeJobs"] == 2 and out[1]["worker"]["hostname"] == "web-1"
    assert out[1]["worker"]["externalId"] == "celery@web-1"
    # A worker first seen by a heartbeat (it started before the agent) is announced online.
    hb = run(m, Event("worker-heartbeat", hostname="celery@web-2", active=0, freq=1.0))
    assert [(e["type"], e["worker"]["state"]) for e in hb] == [
        ("worker_state_change", "online"),
        ("worker_heartbeat", "idle"),
    ]
    time.sleep(0.1)  # past the (tiny) heartbeat window: that is what is under test
    expired = m.expire_workers()
    validate(expired)
    assert [(e["worker"]["externalId"], e["worker"]["state"]) for e in expired] == [
        ("celery@web-2", "offline")
    ]


def test_extensions_stay_bounded():
    m = CeleryEventMapper(CONN)
    huge = "x" * 100_000
    out = run(
        m,
        Event(
            "task-sent",
            uuid="t8",
            name="n",
            args=huge,
            kwargs=huge,
            retries=0,
            eta=None,
            queue="q",
            routing_key=huge,
            exchange=huge,
        ),
    )
    assert len(json.dumps(out[0]["job"]["extensions"]).encode()) <= mapping.MAX_EXTENSIONS_BYTES
    assert len(out[0]["job"]["queue"]) <= 255


def _story(task_id: str) -> list[dict]:
    """A task sent with a secret in its arguments, received, started, failed; then another
    that succeeds with the secret in its result."""
    t0 = time.time()
    common = {"name": "app.login", "retries": 0, "eta": None}
    return [
        Event("task-sent", uuid=task_id, args="('s3cret',)", kwargs="{'pw': 's3cret'}",
              queue="q", timestamp=t0, **common),
        Event("task-received", uuid=task_id, args="('s3cret',)", kwargs="{'pw': 's3cret'}",
              hostname="celery@w", timestamp=t0 + 0.1, **common),
        Event("task-started", uuid=task_id, hostname="celery@w", timestamp=t0 + 0.2),
        Event("task-failed", uuid=task_id, exception="ValueError('no')", hostname="celery@w",
              traceback="Traceback (most recent call last):\nValueError: no", timestamp=t0 + 0.3),
        Event("task-sent", uuid=task_id + "b", args="()", kwargs="{}", queue="q", timestamp=t0,
              **common),
        Event("task-succeeded", uuid=task_id + "b", result="'s3cret'", hostname="celery@w",
              timestamp=t0 + 0.4),
    ]  # fmt: skip


def test_the_agent_sends_argument_and_result_reprs_and_the_traceback():
    out = run(CeleryEventMapper(CONN), *_story("t1"))
    queued, failed = out[0]["job"], out[3]["job"]
    assert queued["extensions"]["args"] == "('s3cret',)"
    assert queued["extensions"]["kwargs"] == "{'pw': 's3cret'}"
    assert failed["state"] == "failed" and failed["stacktrace"].endswith("ValueError: no")
    assert out[-1]["job"]["extensions"]["result"] == "'s3cret'"


def test_the_agent_without_argument_capture_sends_no_argument_or_result_repr():
    m = CeleryEventMapper(CONN, capture_args=False)
    out = run(m, *_story("t1"))
    states_ = [e["job"]["state"] for e in out]
    assert states_ == ["queued", "queued", "active", "failed", "queued", "completed"]
    assert "s3cret" not in json.dumps(out)
    assert all(not set(mapping.USER_DATA_KEYS) & set(e["job"].get("extensions", {})) for e in out)
    failed = out[3]["job"]  # what is not argument data still goes
    assert failed["error"] == "ValueError('no')" and "Traceback" in failed["stacktrace"]
    assert out[0]["job"]["extensions"]["celeryEvent"] == "task-sent"


def test_heartbeats_carry_the_inspected_detail_processed_and_reserved_tasks():
    m = CeleryEventMapper(CONN)
    node = "w1@vm"
    m.set_detail(
        node,
        {"pool": "prefork", "concurrency": 2, "queues": ["a", "b"], "processed": 1,
         "registered": ["tasks.add", "tasks.mul"]},
    )  # fmt: skip
    out = run(
        m,
        Event("task-sent", uuid="t1", name="tasks.add", queue="a"),
        Event("task-sent", uuid="t2", name="tasks.add", queue="b"),
        Event("task-received", uuid="t1", name="tasks.add", hostname=node),
        Event("task-received", uuid="t2", name="tasks.add", hostname=node),
        Event("task-started", uuid="t1", hostname=node),
        Event("worker-heartbeat", hostname=node, active=1, processed=4, freq=2.0, clock=1),
    )
    hb = [e["worker"] for e in out if e["type"] == "worker_heartbeat"][-1]
    assert hb["pool"] == "prefork" and hb["concurrency"] == 2 and hb["queues"] == ["a", "b"]
    assert hb["registered"] == ["tasks.add", "tasks.mul"]
    assert hb["processed"] == 4  # the heartbeat's own count, newer than inspect's
    assert hb["reservedJobs"] == 1 and hb["activeJobs"] == 1  # t2 waits on w1, t1 runs
    out = run(
        m,
        Event("task-succeeded", uuid="t1", hostname=node),
        Event("task-started", uuid="t2", hostname=node),
        Event("worker-heartbeat", hostname=node, active=1, processed=5, freq=2.0, clock=2),
    )
    hb = [e["worker"] for e in out if e["type"] == "worker_heartbeat"][-1]
    assert hb["reservedJobs"] == 0 and hb["processed"] == 5
    # A worker nobody inspected yet still says what its heartbeat says.
    out = run(m, Event("worker-heartbeat", hostname="w2@vm", active=0, processed=9, freq=2.0))
    w2 = [e["worker"] for e in out if e["type"] == "worker_heartbeat"][-1]
    assert w2["processed"] == 9 and w2["reservedJobs"] == 0 and "pool" not in w2
