"""The pure parts of operator actions on the Celery side (no Celery, no network):
the agent's command checks (`actions`), the retry's send_task call and its linked
`queued` event, the `command_result` event, and the integration's captured call
(`mapping.with_call`). End to end, with real workers: tests/celery/test_actions.py."""

from __future__ import annotations

import json
import math
import time

import pytest

from sluice.integrations.celery import actions as a
from sluice.integrations.celery.mapping import (
    MAX_CALL_BYTES,
    job_event,
    with_call,
)
from sluice.integrations.celery.state import CeleryEventMapper
from sluice.timefmt import iso_from_ms

CONN = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


def requested(seconds_ago: float, now: float) -> str:
    return iso_from_ms(int((now - seconds_ago) * 1000))


def failed_job(**overrides):
    job = {
        "id": "j-1",
        "externalId": "4f1c-task",
        "name": "app.send_mail",
        "queue": "mail",
        "state": "failed",
        "extensions": {"call": {"args": [1, "x"], "kwargs": {"to": "a@b"}}},
    }
    job.update(overrides)
    return job


# -- age -------------------------------------------------------------------------


def test_a_command_is_carried_out_up_to_60_seconds_after_it_was_requested():
    now = 1_800_000_000.0
    assert a.command_age({"requestedAt": requested(5, now)}, now) == pytest.approx(5, abs=0.002)
    assert not a.is_expired({"requestedAt": requested(59.9, now)}, now)
    assert a.is_expired({"requestedAt": requested(60.5, now)}, now)
    # No readable time: its age is unknown, so it is not acted on.
    for command in ({}, {"requestedAt": "yesterday"}, {"requestedAt": 12}):
        assert a.command_age(command, now) is None
        assert a.is_expired(command, now)
    # A clock a little ahead of the agent's is not "expired" (negative age).
    assert not a.is_expired({"requestedAt": requested(-2, now)}, now)


# -- retry: the job → send_task ----------------------------------------------------


def test_a_failed_job_with_a_captured_call_is_resent_as_it_was_called():
    call = a.retry_call(failed_job())
    assert call == a.SendTask(
        name="app.send_mail",
        args=[1, "x"],
        kwargs={"to": "a@b"},
        queue="mail",
        retry_of="4f1c-task",
    )
    # Cancelled jobs too; no queue: Celery's routing decides.
    assert a.retry_call(failed_job(state="cancelled", queue=None)).queue is None


def test_a_job_without_a_captured_call_fails_with_the_clear_error():
    with pytest.raises(a.CommandError) as info:
        a.retry_call(failed_job(extensions={"args": "(1, 'x')"}))
    assert str(info.value) == a.NO_CALL
    assert "capture_call=True" in str(info.value)
    with pytest.raises(a.CommandError, match=r"arguments not captured \(too large\)"):
        a.retry_call(failed_job(extensions={"callSkipped": "too large"}))
    with pytest.raises(a.CommandError, match="not"):
        a.retry_call(failed_job(extensions={"call": {"args": "1, 2", "kwargs": {}}}))


@pytest.mark.parametrize("state", ["queued", "active", "completed", "retrying", "scheduled"])
def test_only_failed_or_cancelled_jobs_are_retried(state):
    with pytest.raises(a.CommandError, match=f"the job is {state}"):
        a.retry_call(failed_job(state=state))


def test_a_job_whose_task_name_is_unknown_cannot_be_resent():
    with pytest.raises(a.CommandError, match="task name"):
        a.retry_call(failed_job(name="unknown"))


def test_the_new_task_is_queued_linked_to_the_original_with_the_same_call():
    call = a.retry_call(failed_job())
    published = 1_800_000_000.123
    event = a.retried_job_event(CONN, "new-id", call, timestamp=published)
    assert event["type"] == "job_state_change" and event["connectionId"] == CONN
    assert event["timestamp"] == "2027-01-15T08:00:00.123Z"
    job = event["job"]
    assert job["externalId"] == "new-id" and job["state"] == "queued"
    assert job["name"] == "app.send_mail" and job["queue"] == "mail" and job["attempt"] == 1
    assert job["extensions"]["retryOf"] == "4f1c-task"
    assert job["extensions"]["call"] == {"args": [1, "x"], "kwargs": {"to": "a@b"}}
    # Its id is the one every producer gives that transition (task, attempt 1, queued).
    assert event["id"] == job_event(CONN, task_id="new-id", name="x", state="queued")["id"]
    # The agent with --no-args sends no call.
    quiet = a.retried_job_event(CONN, "new-id", call, capture_call=False)
    assert "call" not in quiet["job"]["extensions"]


def test_a_large_call_is_kept_whole_on_the_new_tasks_event():
    # job_event bounds extensions by cutting long values into strings: never the call.
    big = {"args": ["x" * 6_000], "kwargs": {}}
    call = a.retry_call(failed_job(extensions={"call": big}))
    event = a.retried_job_event(CONN, "n", call)
    assert event["job"]["extensions"]["call"] == big


def test_the_agents_mapper_links_the_retried_tasks_later_events():
    mapper = CeleryEventMapper(CONN)
    mapper.note_retry("new-id", "4f1c-task", "app.send_mail", "mail")
    now = time.time()
    out = mapper.map(
        {"type": "task-received", "uuid": "new-id", "hostname": "w1@h", "timestamp": now}
    )
    out += mapper.map(
        {"type": "task-started", "uuid": "new-id", "hostname": "w1@h", "timestamp": now}
    )
    out += mapper.map(
        {"type": "task-succeeded", "uuid": "new-id", "timestamp": now, "runtime": 0.1}
    )
    assert [e["job"]["state"] for e in out] == ["queued", "active", "completed"]
    for e in out:
        assert e["job"]["extensions"]["retryOf"] == "4f1c-task"
        assert e["job"]["name"] == "app.send_mail" and e["job"]["queue"] == "mail"
    other = mapper.map({"type": "task-started", "uuid": "other", "timestamp": now})
    assert "retryOf" not in other[0]["job"].get("extensions", {})


# -- command fields --------------------------------------------------------------------


def test_terminate_signals_are_the_specs_six_and_default_to_sigterm():
    assert a.terminate_signal({}) == "SIGTERM"
    assert a.terminate_signal({"signal": "SIGKILL"}) == "SIGKILL"
    for bad in ("SIGSTOP", "9", "kill"):
        with pytest.raises(a.CommandError, match="unknown signal"):
            a.terminate_signal({"signal": bad})


def test_pool_n_is_1_to_100():
    assert a.pool_n({}) == 1 and a.pool_n({"n": None}) == 1 and a.pool_n({"n": 100}) == 100
    for bad in (0, 101, "2", 1.5, True):
        with pytest.raises(a.CommandError):
            a.pool_n({"n": bad})


def test_a_command_names_its_job_and_worker_or_fails_clearly():
    cmd = {"job": {"id": "j-1", "externalId": "t-1"}, "worker": {"id": "w", "externalId": "w1@h"}}
    assert a.command_job_ref(cmd) == "j-1"
    assert a.command_job_ref({"job": {"externalId": "t-1"}}) == "t-1"
    assert a.command_task_id(cmd) == "t-1"
    assert a.command_worker(cmd) == "w1@h"
    for broken in ({}, {"job": "t-1"}, {"job": {}}, {"worker": {"id": "w"}}):
        with pytest.raises(a.CommandError):
            a.command_job_ref(broken) if "worker" not in broken else a.command_worker(broken)
    with pytest.raises(a.CommandError, match="externalId"):
        a.command_task_id({"job": {"id": "j-1"}})


# -- control replies -----------------------------------------------------------------


def test_celery_control_replies_become_one_word_per_worker():
    replies = [
        {"w1@h": {"ok": "pool will grow"}},
        {"w2@h": {"error": "pool does not support growing"}},
        {"w3@h": "pong"},
        "junk",
    ]
    assert a.control_replies(replies) == {
        "w1@h": "ok",
        "w2@h": "error: pool does not support growing",
        "w3@h": "pong",
    }
    assert a.control_replies(None) == {}


def test_a_pool_command_is_done_only_when_its_worker_said_ok():
    assert a.control_outcome("pool_grow", "w1@h", {"w1@h": "ok"}) == (
        "done",
        {"replies": {"w1@h": "ok"}},
    )
    status, detail = a.control_outcome("pool_shrink", "w1@h", {})
    assert status == "failed" and "no reply from worker w1@h" in detail["error"]
    status, detail = a.control_outcome("pool_grow", "w1@h", {"w1@h": "error: nope"})
    assert status == "failed" and detail["error"] == "error: nope"
    # A shutdown is never answered (the worker raises before replying): sent is done.
    status, detail = a.control_outcome("shutdown", "w1@h", {})
    assert status == "done" and "do not reply" in detail["note"]


# -- bulk retry ------------------------------------------------------------------------


def test_a_bulk_retrys_filter_becomes_the_job_lists_query():
    flt = {"state": "failed", "queue": "mail", "name": "", "worker": None, "q": "boom", "x": 1}
    assert a.bulk_query(flt) == {"state": "failed", "queue": "mail", "q": "boom", "limit": 200}
    assert a.bulk_query(flt, cursor="123")["cursor"] == "123"
    for bad in (None, {}, {"state": "completed"}, {"state": "queued"}):
        with pytest.raises(a.CommandError, match="filter.state"):
            a.bulk_query(bad)


def test_a_bulk_retrys_detail_counts_and_lists_the_first_100_new_ids():
    tally = a.BulkTally(retried=150, skipped=2)
    tally.new_job_ids = [f"id-{i}" for i in range(150)]
    status, detail = tally.outcome()
    assert status == "done"
    assert detail["retried"] == 150 and detail["failed"] == 0 and detail["skipped"] == 2
    assert detail["newJobIds"] == [f"id-{i}" for i in range(100)]
    assert detail["limit"] == a.MAX_BULK_RETRY == 1_000
    assert detail["skippedReason"] == a.NO_CALL and "more" not in detail
    stopped = a.BulkTally(retried=1_000, stopped_at_limit=True)
    assert "stopped at 1000 jobs per command" in stopped.outcome()[1]["more"]
    # Nothing could be retried: failed, with the reason.
    status, detail = a.BulkTally(skipped=3).outcome()
    assert status == "failed" and detail["error"] == a.NO_CALL
    # Nothing matched: done, zero.
    assert a.BulkTally().outcome()[0] == "done"


# -- the result event --------------------------------------------------------------------


def test_the_result_is_a_command_result_event_with_the_commands_id():
    command = {"commandId": "c-1", "action": "retry", "requestedAt": "2026-12-01T10:00:00.000Z"}
    event = a.result_event(CONN, command, "done", {"newJobId": "n-1"}, "2026-12-01T10:00:01.000Z")
    assert event["type"] == "command_result" and event["framework"] == "celery"
    assert event["connectionId"] == CONN and event["timestamp"] == "2026-12-01T10:00:01.000Z"
    assert event["command"] == {
        "commandId": "c-1",
        "action": "retry",
        "status": "done",
        "detail": {"newJobId": "n-1"},
    }
    # One command, one result: a resend (or a second answer) has the same id.
    again = a.result_event(CONN, command, "failed", {"error": "x"})
    assert (
        again["id"] == event["id"] != a.result_event(CONN, {"commandId": "c-2"}, "done", {})["id"]
    )


def test_a_results_detail_is_at_most_4_kib_of_json():
    detail = {"retried": 100, "newJobIds": [f"{i:036d}" for i in range(200)], "error": "e" * 9000}
    bounded = a.bounded_detail(detail)
    assert len(json.dumps(bounded, separators=(",", ":")).encode()) <= a.MAX_DETAIL_BYTES
    assert bounded["retried"] == 100 and bounded["truncated"] is True
    assert bounded["newJobIds"] == detail["newJobIds"][: len(bounded["newJobIds"])]
    small = {"newJobId": "n"}
    assert a.bounded_detail(small) == small
    # 100 uuids with the counts fit as they are (the spec's bulk detail).
    ids = {"retried": 100, "failed": 0, "newJobIds": [f"{i:036d}" for i in range(100)]}
    assert a.bounded_detail(ids) == ids


def test_the_commands_poll_url():
    assert a.commands_path("", CONN, None, 25) == f"/api/connections/{CONN}/commands?wait=25"
    assert (
        a.commands_path("/sluice", CONN, "1733050000000-0", 25)
        == f"/sluice/api/connections/{CONN}/commands?after=1733050000000-0&wait=25"
    )


# -- the integration's captured call ---------------------------------------------------------


def event_with_ext(**ext):
    return job_event(CONN, task_id="t", name="n", state="failed", extensions=ext or None)


def test_a_json_call_is_put_whole_on_the_event():
    event = with_call(event_with_ext(celerySignal="task_failure"), (1, "a", [2]), {"k": None})
    ext = event["job"]["extensions"]
    assert ext["call"] == {"args": [1, "a", [2]], "kwargs": {"k": None}}
    assert ext["celerySignal"] == "task_failure" and "callSkipped" not in ext
    assert with_call(event_with_ext(), None, None)["job"]["extensions"]["call"] == {
        "args": [],
        "kwargs": {},
    }


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((object(),), {}),
        ((), {"when": time}),
        ((math.nan,), {}),
        ((), {1: "x"}),
        ("ab", {}),
        (([{2: 3}],), {}),
        ((b"x",), {}),
    ],
)
def test_a_call_that_is_not_json_is_skipped_and_says_so(args, kwargs):
    ext = with_call(event_with_ext(), args, kwargs)["job"]["extensions"]
    assert "call" not in ext and ext["callSkipped"] == "not JSON"


def test_a_call_too_large_for_16_kib_or_for_the_servers_extensions_is_skipped():
    # Over 16 KiB on its own.
    ext = with_call(event_with_ext(), ("x" * (MAX_CALL_BYTES + 1),), {}, max_extensions_bytes=10**6)
    assert ext["job"]["extensions"]["callSkipped"] == "too large"
    # Under 16 KiB but the event's extensions would pass the server's limit (8 KiB by
    # default): the server would refuse the whole event (and the failure with it).
    ext = with_call(event_with_ext(), ("x" * 9_000,), {})["job"]["extensions"]
    assert ext["callSkipped"] == "too large" and "call" not in ext
    # With a server that allows more, the same call goes.
    ext = with_call(event_with_ext(), ("x" * 9_000,), {}, max_extensions_bytes=65_536)
    assert ext["job"]["extensions"]["call"]["args"] == ["x" * 9_000]
    # Counted as the server counts (ASCII escapes), never under.
    ext = with_call(event_with_ext(), ("é" * 1_300,), {}, max_extensions_bytes=8_192)
    assert "call" in ext["job"]["extensions"]
    ext = with_call(event_with_ext(), ("é" * 1_400,), {}, max_extensions_bytes=8_000)
    assert ext["job"]["extensions"]["callSkipped"] == "too large"


def test_the_events_the_agent_sends_are_accepted_by_the_servers_validator():
    from sluice.config import load_settings
    from sluice.schema import validate_batch

    limit = load_settings({}).max_extensions_bytes
    command = {"commandId": "8f7e6d5c-0000-4000-8000-000000000000", "action": "bulk_retry"}
    tally = a.BulkTally(retried=100)
    tally.new_job_ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(150)]
    status, detail = tally.outcome()
    call = a.retry_call(failed_job(extensions={"call": {"args": ["é" * 3_000], "kwargs": {}}}))
    validate_batch(
        [
            a.result_event(CONN, command, status, detail),
            a.result_event(CONN, {**command, "action": "retry"}, "failed", {"error": a.NO_CALL}),
            a.retried_job_event(CONN, "new", call),
            with_call(event_with_ext(celerySignal="task_failure"), ("x" * 7_000,), {}),
        ],
        CONN,
        limit,
    )
