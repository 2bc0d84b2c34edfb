"""Operator actions' bodies, commands, digests and the command stream's parameters (pure)."""

from __future__ import annotations

import pytest

from sluice import contract as c
from sluice.actions import (
    command,
    digest,
    job_target,
    parse_bulk_action,
    parse_commands_query,
    parse_job_action,
    parse_worker_action,
    start_id,
    worker_target,
)
from sluice.errors import Invalid

# -- job actions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, parsed",
    [
        ({"action": "revoke"}, {"action": "revoke"}),
        ({"action": "retry"}, {"action": "retry"}),
        ({"action": "terminate"}, {"action": "terminate", "signal": "SIGTERM"}),
        (
            {"action": "terminate", "signal": "SIGKILL"},
            {"action": "terminate", "signal": "SIGKILL"},
        ),
        ({"action": "terminate", "signal": None}, {"action": "terminate", "signal": "SIGTERM"}),
    ],
)
def test_job_action(body, parsed):
    assert parse_job_action(body) == parsed


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "action"),
        ({"action": "pool_grow"}, "action"),
        ({"action": "bulk_retry"}, "action"),
        ({"action": 1}, "action"),
        ({"action": "terminate", "signal": "SIGSEGV"}, "signal"),
        ({"action": "terminate", "signal": 9}, "signal"),
        ({"action": "revoke", "signal": "SIGTERM"}, "signal"),
        ({"action": "revoke", "force": True}, "force"),
    ],
)
def test_job_action_invalid(body, field):
    with pytest.raises(Invalid) as info:
        parse_job_action(body)
    assert field in info.value.details


# -- bulk retry ----------------------------------------------------------------------


def test_bulk_retry():
    assert parse_bulk_action({"action": "retry", "filter": {"state": "failed"}}) == {
        "action": "bulk_retry",
        "filter": {"state": "failed"},
    }
    body = {
        "action": "retry",
        "filter": {"state": "cancelled", "queue": "q", "name": "n", "worker": "w1@h", "q": "x"},
    }
    assert parse_bulk_action(body)["filter"] == body["filter"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"filter": {"state": "failed"}}, "action"),
        ({"action": "revoke", "filter": {"state": "failed"}}, "action"),
        ({"action": "retry"}, "filter"),
        ({"action": "retry", "filter": []}, "filter"),
        ({"action": "retry", "filter": {}}, "filter.state"),
        ({"action": "retry", "filter": {"state": "completed"}}, "filter.state"),
        ({"action": "retry", "filter": {"state": "failed", "queue": ""}}, "filter.queue"),
        ({"action": "retry", "filter": {"state": "failed", "queue": 3}}, "filter.queue"),
        (
            {"action": "retry", "filter": {"state": "failed", "q": "x" * (c.MAX_QUERY + 1)}},
            "filter.q",
        ),
        ({"action": "retry", "filter": {"state": "failed", "limit": 3}}, "filter.limit"),
        ({"action": "retry", "filter": {"state": "failed"}, "n": 1}, "n"),
    ],
)
def test_bulk_retry_invalid(body, field):
    with pytest.raises(Invalid) as info:
        parse_bulk_action(body)
    assert field in info.value.details


# -- worker actions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, parsed",
    [
        ({"action": "pool_grow"}, {"action": "pool_grow", "n": 1}),
        ({"action": "pool_shrink", "n": 3}, {"action": "pool_shrink", "n": 3}),
        ({"action": "pool_grow", "n": c.POOL_N_MAX}, {"action": "pool_grow", "n": 100}),
        ({"action": "shutdown"}, {"action": "shutdown"}),
    ],
)
def test_worker_action(body, parsed):
    assert parse_worker_action(body) == parsed


@pytest.mark.parametrize(
    "body, field",
    [
        ({"action": "retry"}, "action"),
        ({"action": "pool_grow", "n": 0}, "n"),
        ({"action": "pool_grow", "n": 101}, "n"),
        ({"action": "pool_grow", "n": 1.5}, "n"),
        ({"action": "pool_grow", "n": True}, "n"),
        ({"action": "pool_grow", "n": "2"}, "n"),
        ({"action": "shutdown", "n": 1}, "n"),
        ({"action": "shutdown", "signal": "SIGTERM"}, "signal"),
    ],
)
def test_worker_action_invalid(body, field):
    with pytest.raises(Invalid) as info:
        parse_worker_action(body)
    assert field in info.value.details


# -- commands and digests ------------------------------------------------------------

JOB = {"id": "j-id", "externalId": "t1", "name": "app.add", "queue": "celery", "state": "failed"}


def test_job_command_shape():
    made = command(
        "cid",
        "2026-12-01T10:00:00.000Z",
        {"action": "terminate", "signal": "SIGKILL"},
        job_target(JOB),
    )
    assert made == {
        "commandId": "cid",
        "action": "terminate",
        "requestedAt": "2026-12-01T10:00:00.000Z",
        "job": {"id": "j-id", "externalId": "t1", "name": "app.add", "queue": "celery"},
        "signal": "SIGKILL",
    }


def test_worker_and_bulk_command_shapes():
    worker = {"id": "w-id", "externalId": "w1@host", "state": "busy"}
    made = command("c", "t", {"action": "pool_grow", "n": 2}, worker_target(worker))
    assert made["worker"] == {"id": "w-id", "externalId": "w1@host"} and made["n"] == 2
    bulk = command("c", "t", {"action": "bulk_retry", "filter": {"state": "failed"}}, {})
    assert bulk == {
        "commandId": "c",
        "action": "bulk_retry",
        "requestedAt": "t",
        "filter": {"state": "failed"},
    }


def test_a_job_without_a_queue_says_null():
    assert job_target({"id": "i", "externalId": "e", "name": "n"})["job"]["queue"] is None


def test_digest_is_the_same_for_the_same_action_on_the_same_target():
    a = digest({"action": "retry"}, job_target(JOB))
    assert a == digest({"action": "retry"}, job_target({**JOB, "state": "retrying"}))
    assert len(a) == 32
    assert a != digest({"action": "revoke"}, job_target(JOB))
    assert a != digest({"action": "retry"}, job_target({**JOB, "id": "other"}))
    # The job's identity, not what its record says meanwhile (a double click across an
    # update of the job is still one command).
    moved = {**JOB, "name": "renamed", "queue": "elsewhere", "externalId": JOB["externalId"]}
    assert a == digest({"action": "retry"}, job_target(moved))
    pool = {"action": "pool_grow", "n": 1}
    w1 = worker_target({"id": "w-1", "externalId": "w1@h"})
    assert digest(pool, w1) == digest(pool, worker_target({"id": "w-1", "externalId": "x"}))
    assert digest(pool, w1) != digest(pool, worker_target({"id": "w-2", "externalId": "w1@h"}))
    sigterm = digest({"action": "terminate", "signal": "SIGTERM"}, job_target(JOB))
    assert sigterm != digest({"action": "terminate", "signal": "SIGKILL"}, job_target(JOB))
    failed = {"action": "bulk_retry", "filter": {"state": "failed", "queue": "q"}}
    same = {"filter": {"queue": "q", "state": "failed"}, "action": "bulk_retry"}
    assert digest(failed, {}) == digest(same, {})


# -- the command stream's parameters -------------------------------------------------


@pytest.mark.parametrize(
    "args, after, wait",
    [
        ({}, None, 0.0),
        ({"after": "1772187000000-3"}, "1772187000000-3", 0.0),
        ({"after": "1772187000000"}, "1772187000000-0", 0.0),
        ({"after": "", "wait": "0"}, None, 0.0),
        ({"wait": "25"}, None, 25.0),
        ({"wait": "2.5"}, None, 2.5),
    ],
)
def test_commands_query(args, after, wait):
    query = parse_commands_query(args)
    assert (query.after, query.wait) == (after, wait)


@pytest.mark.parametrize(
    "args, field",
    [
        ({"after": "x"}, "after"),
        ({"after": "1-2-3"}, "after"),
        ({"after": str(2**64)}, "after"),
        ({"wait": "26"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"wait": "inf"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "1" * 40}, "wait"),
    ],
)
def test_commands_query_invalid(args, field):
    with pytest.raises(Invalid) as info:
        parse_commands_query(args)
    assert field in info.value.details


def test_start_id_is_the_oldest_command_still_young_enough():
    assert start_id(1_000_000) == f"{1_000_000 - c.COMMAND_MAX_AGE_SECONDS * 1000}-0"
    assert start_id(5) == "0-0"
