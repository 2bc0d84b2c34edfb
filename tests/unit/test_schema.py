"""Validation and normalisation of producer events, and the stream's parameters (pure)."""

from __future__ import annotations

import copy
import random
import uuid

import pytest

from sluice import contract as c
from sluice.errors import Invalid
from sluice.schema import (
    ID_NAMESPACE,
    MAX_REPORTED_PROBLEMS,
    FieldErrors,
    normalise,
    parse_event_id,
    parse_types,
    parse_uuid,
    stable_id,
    validate_batch,
    validate_event,
)

CONN = "0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e"
EXT_BYTES = 8192
TS = "2026-03-01T12:00:00.000Z"


def job_event(**job):
    payload = {"externalId": "j1", "name": "send_email", "state": "active", **job}
    return {
        "type": "job_state_change",
        "timestamp": TS,
        "framework": "celery",
        "connectionId": CONN,
        "job": payload,
    }


def worker_event(kind="worker_heartbeat", **worker):
    payload = {"externalId": "w1", "state": "online", **worker}
    return {
        "type": kind,
        "timestamp": TS,
        "framework": "bullmq",
        "connectionId": CONN,
        "worker": payload,
    }


def queue_event(**queue):
    payload = {"name": "default", "depth": 3, **queue}
    return {
        "type": "queue_snapshot",
        "timestamp": TS,
        "framework": "sidekiq",
        "connectionId": CONN,
        "queue": payload,
    }


def command_event(**command):
    payload = {"commandId": "c1", "action": "retry", "status": "done", **command}
    return {
        "type": "command_result",
        "timestamp": TS,
        "framework": "celery",
        "connectionId": CONN,
        "command": payload,
    }


def problems(event, connection_id=CONN, max_extensions_bytes=EXT_BYTES):
    errors = FieldErrors()
    validate_event(errors, event, 0, connection_id, max_extensions_bytes)
    return errors.details


# -- valid events -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        job_event(),
        job_event(
            previousState="queued",
            queue="q",
            workerId="w",
            attempt=1,
            maxRetries=0,
            progress=0.5,
            error="e",
            stacktrace="s",
            createdAt=TS,
            startedAt=TS,
            finishedAt=TS,
            extensions={"a": [1, 2]},
        ),
        job_event(progress=0),
        job_event(progress=1),
        job_event(progress=1.0),
        job_event(attempt=c.MAX_INTEGER),
        worker_event(),
        worker_event("worker_state_change", previousState="busy", queues=["a", "b"]),
        worker_event(activeJobs=0, concurrency=0, pid=0, queues=[]),
        queue_event(),
        queue_event(depth=0, consumers=0),
        {**job_event(), "id": "p" * c.MAX_PRODUCER_ID},
        {**job_event(), "id": "x"},
        command_event(),
        command_event(commandId="i" * c.MAX_COMMAND_ID, status="failed", detail={}),
        command_event(action="bulk_retry", detail={"retried": 2, "newJobIds": ["a", "b"]}),
        # 4096 bytes of JSON exactly: {"e":"…"} is 8 bytes around the string.
        command_event(detail={"e": "x" * (c.MAX_COMMAND_DETAIL_BYTES - 8)}),
    ],
)
def test_valid_events_have_no_problems(event):
    assert problems(event) == {}
    validate_batch([event], CONN, EXT_BYTES)  # no exception


# -- one field kind at a time ---------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, detail",
    [
        # string
        ("externalId", 5, "must be a string"),
        ("externalId", "", "must not be empty"),
        ("externalId", "x" * (c.MAX_EXTERNAL_ID + 1), f"at most {c.MAX_EXTERNAL_ID} characters"),
        ("name", "n" * (c.MAX_JOB_NAME + 1), f"at most {c.MAX_JOB_NAME} characters"),
        ("queue", "q" * (c.MAX_QUEUE_NAME + 1), f"at most {c.MAX_QUEUE_NAME} characters"),
        ("error", "e" * (c.MAX_ERROR + 1), f"at most {c.MAX_ERROR} characters"),
        ("stacktrace", "s" * (c.MAX_STACKTRACE + 1), f"at most {c.MAX_STACKTRACE} characters"),
        ("queue", ["q"], "must be a string"),
        # integer
        ("attempt", 0, "must be an integer >= 1"),
        ("attempt", True, "must be an integer >= 1"),
        ("attempt", 1.0, "must be an integer >= 1"),
        ("attempt", "2", "must be an integer >= 1"),
        ("attempt", c.MAX_INTEGER + 1, "must be an integer >= 1"),
        ("maxRetries", -1, "must be an integer >= 0"),
        # choice
        ("state", "running", "one of " + ", ".join(c.JOB_STATES)),
        ("state", "ACTIVE", "one of " + ", ".join(c.JOB_STATES)),
        ("previousState", 3, "one of " + ", ".join(c.JOB_STATES)),
        # fraction
        ("progress", -0.01, "must be a number from 0.0 to 1.0"),
        ("progress", 1.01, "must be a number from 0.0 to 1.0"),
        ("progress", True, "must be a number from 0.0 to 1.0"),
        ("progress", "0.5", "must be a number from 0.0 to 1.0"),
        ("progress", float("nan"), "must be a number from 0.0 to 1.0"),
        ("progress", float("inf"), "must be a number from 0.0 to 1.0"),
        # time
        ("createdAt", "yesterday", "must be an ISO 8601 timestamp"),
        ("startedAt", 1772187000, "must be an ISO 8601 timestamp"),
        ("finishedAt", "2026-13-01T00:00:00Z", "must be an ISO 8601 timestamp"),
        # object
        ("extensions", [1], "must be a JSON object"),
        ("extensions", "x", "must be a JSON object"),
        ("extensions", {"k": "v" * EXT_BYTES}, f"at most {EXT_BYTES} bytes of JSON"),
        # required
        ("state", None, "required"),
        ("name", None, "required"),
    ],
)
def test_job_field_problems(field, value, detail):
    event = job_event(**{field: value})
    assert problems(event) == {f"events[0].job.{field}": detail}


def test_extensions_limit_is_counted_in_utf8_bytes_of_compact_json():
    # {"k":"é…"}: 8 bytes of punctuation and key, 2 bytes per "é".
    fits = {"k": "é" * ((EXT_BYTES - 8) // 2)}
    assert problems(job_event(extensions=fits)) == {}
    too_big = {"k": "é" * ((EXT_BYTES - 8) // 2 + 1)}
    assert problems(job_event(extensions=too_big)) == {
        "events[0].job.extensions": f"at most {EXT_BYTES} bytes of JSON"
    }


@pytest.mark.parametrize(
    "queues",
    [
        "default",
        ["ok", ""],
        ["ok", 3],
        ["q" * (c.MAX_QUEUE_NAME + 1)],
        ["q"] * (c.MAX_QUEUES + 1),
    ],
)
def test_worker_queue_names(queues):
    assert problems(worker_event(queues=queues)) == {
        "events[0].worker.queues": f"a list of at most {c.MAX_QUEUES} queue names"
    }
    assert problems(worker_event(queues=["q" * c.MAX_QUEUE_NAME] * c.MAX_QUEUES)) == {}


@pytest.mark.parametrize(
    "field, value, detail",
    [
        ("state", "sleeping", "one of " + ", ".join(c.WORKER_STATES)),
        ("hostname", "h" * (c.MAX_HOSTNAME + 1), f"at most {c.MAX_HOSTNAME} characters"),
        ("activeJobs", -1, "must be an integer >= 0"),
        ("pid", 1.5, "must be an integer >= 0"),
        ("externalId", None, "required"),
    ],
)
def test_worker_field_problems(field, value, detail):
    assert problems(worker_event(**{field: value})) == {f"events[0].worker.{field}": detail}


@pytest.mark.parametrize(
    "field, value, detail",
    [
        ("depth", None, "required"),
        ("depth", -1, "must be an integer >= 0"),
        ("name", "", "must not be empty"),
        ("consumers", "2", "must be an integer >= 0"),
    ],
)
def test_queue_field_problems(field, value, detail):
    assert problems(queue_event(**{field: value})) == {f"events[0].queue.{field}": detail}


@pytest.mark.parametrize(
    "field, value, detail",
    [
        ("commandId", None, "required"),
        ("commandId", "", "must not be empty"),
        ("commandId", "i" * (c.MAX_COMMAND_ID + 1), f"at most {c.MAX_COMMAND_ID} characters"),
        ("action", "reboot", "one of " + ", ".join(c.COMMAND_ACTIONS)),
        ("status", "pending", "one of done, failed"),
        ("status", None, "required"),
        ("detail", [], "must be a JSON object"),
        ("detail", "boom", "must be a JSON object"),
        (
            "detail",
            {"e": "x" * (c.MAX_COMMAND_DETAIL_BYTES - 7)},
            f"at most {c.MAX_COMMAND_DETAIL_BYTES} bytes of JSON",
        ),
    ],
)
def test_command_result_field_problems(field, value, detail):
    event = command_event(**{field: value})
    if value is None:
        del event["command"][field]
    assert problems(event) == {f"events[0].command.{field}": detail}


def test_command_result_detail_bound_is_fixed_not_the_extensions_setting():
    event = command_event(detail={"e": "x" * 2000})
    assert problems(event, max_extensions_bytes=100) == {}


def test_unknown_payload_fields_at_most_five_sorted():
    # The event's timestamp is not a payload field.
    extra = {k: 1 for k in ("zz", "timestamp", "aa", "mm", "bb", "cc", "dd")}
    assert problems(job_event(**extra)) == {
        f"events[0].job.{k}": "unknown field" for k in ("aa", "bb", "cc", "dd", "mm")
    }


def test_worker_fields_are_not_allowed_in_a_job():
    assert problems(job_event(hostname="h")) == {"events[0].job.hostname": "unknown field"}
    assert problems(queue_event(previousState="x")) == {
        "events[0].queue.previousState": "unknown field"
    }


# -- the envelope -------------------------------------------------------------------------


def test_unknown_top_level_fields():
    event = {**job_event(), "extra": 1, "Type": "x"}
    assert problems(event) == {
        "events[0].Type": "unknown field",
        "events[0].extra": "unknown field",
    }


@pytest.mark.parametrize("kind", [None, "job", "JOB_STATE_CHANGE", 1, "job:state_change"])
def test_unknown_type_stops_at_the_type(kind):
    event = {"type": kind, "timestamp": "bad", "connectionId": "other"}
    assert problems(event) == {"events[0].type": "one of " + ", ".join(c.PRODUCER_TYPES)}


@pytest.mark.parametrize("event", [None, [], "job", 3])
def test_an_event_must_be_an_object(event):
    assert problems(event) == {"events[0]": "must be an object"}


@pytest.mark.parametrize(
    "change, field, detail",
    [
        ({"timestamp": None}, "timestamp", "required"),
        ({"timestamp": "12:00"}, "timestamp", "must be an ISO 8601 timestamp"),
        ({"timestamp": 1772187000000}, "timestamp", "must be an ISO 8601 timestamp"),
        ({"framework": None}, "framework", "required"),
        ({"framework": "rq"}, "framework", "one of " + ", ".join(c.FRAMEWORKS)),
        ({"connectionId": None}, "connectionId", "must equal the API key's connection id"),
        (
            {"connectionId": CONN.upper()},
            "connectionId",
            "must equal the API key's connection id",
        ),
        ({"id": ""}, "id", f"a string of 1 to {c.MAX_PRODUCER_ID} characters"),
        ({"id": 7}, "id", f"a string of 1 to {c.MAX_PRODUCER_ID} characters"),
        (
            {"id": "p" * (c.MAX_PRODUCER_ID + 1)},
            "id",
            f"a string of 1 to {c.MAX_PRODUCER_ID} characters",
        ),
        ({"job": None}, "job", "required object"),
        ({"job": ["x"]}, "job", "required object"),
        ({"worker": {}}, "worker", "not allowed with type job_state_change"),
        ({"queue": None}, "queue", "not allowed with type job_state_change"),
    ],
)
def test_envelope_problems(change, field, detail):
    event = job_event()
    event.update(change)
    if change.get(field, 0) is None and field in ("timestamp", "framework", "job"):
        del event[field]  # absent and null are the same
    assert problems(event) == {f"events[0].{field}": detail}


def test_payload_of_another_type_is_a_mismatch():
    event = queue_event()
    event["type"] = "worker_heartbeat"
    assert problems(event) == {
        "events[0].queue": "not allowed with type worker_heartbeat",
        "events[0].worker": "required object",
    }


def test_batch_names_each_problem_by_index_and_reports_nothing_appended():
    events = [job_event(), job_event(state="x"), "nope", queue_event(depth=-5)]
    with pytest.raises(Invalid) as info:
        validate_batch(events, CONN, EXT_BYTES)
    assert info.value.message == "The batch was rejected; nothing was appended"
    assert info.value.details == {
        "events[1].job.state": "one of " + ", ".join(c.JOB_STATES),
        "events[2]": "must be an object",
        "events[3].queue.depth": "must be an integer >= 0",
    }


def test_reported_problems_are_capped():
    events = [job_event(state="x") for _ in range(MAX_REPORTED_PROBLEMS + 50)]
    with pytest.raises(Invalid) as info:
        validate_batch(events, CONN, EXT_BYTES)
    assert len(info.value.details) == MAX_REPORTED_PROBLEMS
    assert f"events[{MAX_REPORTED_PROBLEMS - 1}].job.state" in info.value.details


def test_validation_does_not_change_the_event():
    event = job_event(createdAt="2026-03-01T13:00:00+01:00")
    before = copy.deepcopy(event)
    problems(event)
    normalise(event, CONN)
    assert event == before


# -- normalise: exact bytes -------------------------------------------------------------


def test_normalise_job_minimal():
    name, data = normalise(job_event(), CONN)
    assert name == c.JOB_STATE_CHANGE
    job_id = stable_id(CONN, "job", "j1")
    assert data == (
        '{"id":"' + job_id + '","externalId":"j1","name":"send_email","state":"active",'
        '"previousState":null,"timestamp":"2026-03-01T12:00:00.000Z"}'
    )


def test_normalise_job_full_field_order_and_times():
    event = job_event(
        extensions={"b": 1, "a": "é"},
        finishedAt="2026-03-01T12:00:03.5Z",
        startedAt="2026-03-01T12:00:01Z",
        createdAt="2026-03-01T13:00:00+01:00",
        stacktrace="tb",
        error="boom",
        progress=0.25,
        maxRetries=3,
        attempt=2,
        workerId="w9",
        queue="mail",
        previousState="queued",
    )
    event["timestamp"] = "2026-03-01T12:00:00.123456+00:00"
    _, data = normalise(event, CONN)
    assert data == (
        '{"id":"' + stable_id(CONN, "job", "j1") + '","externalId":"j1","name":"send_email",'
        '"state":"active","previousState":"queued","timestamp":"2026-03-01T12:00:00.123Z",'
        '"queue":"mail","workerId":"w9","attempt":2,"maxRetries":3,"progress":0.25,'
        '"error":"boom","stacktrace":"tb","createdAt":"2026-03-01T12:00:00.000Z",'
        '"startedAt":"2026-03-01T12:00:01.000Z","finishedAt":"2026-03-01T12:00:03.500Z",'
        '"extensions":{"b":1,"a":"é"}}'
    )


def test_normalise_worker_heartbeat_defaults():
    name, data = normalise(worker_event(), CONN)
    assert name == c.WORKER_HEARTBEAT
    # hostname <- externalId, activeJobs 0, no previousState on a heartbeat.
    assert data == (
        '{"id":"' + stable_id(CONN, "worker", "w1") + '","externalId":"w1","hostname":"w1",'
        '"state":"online","activeJobs":0,"timestamp":"2026-03-01T12:00:00.000Z"}'
    )


def test_normalise_worker_heartbeat_given_fields():
    event = worker_event(
        hostname="", previousState="idle", activeJobs=4, concurrency=8, pid=77, queues=["a"]
    )
    _, data = normalise(event, CONN)
    assert data == (
        '{"id":"' + stable_id(CONN, "worker", "w1") + '","externalId":"w1","hostname":"w1",'
        '"state":"online","previousState":"idle","activeJobs":4,'
        '"timestamp":"2026-03-01T12:00:00.000Z","concurrency":8,"pid":77,"queues":["a"]}'
    )


def test_normalise_worker_state_change_always_says_previous_state():
    name, data = normalise(worker_event("worker_state_change", hostname="box-1"), CONN)
    assert name == c.WORKER_STATE_CHANGE
    assert data == (
        '{"id":"' + stable_id(CONN, "worker", "w1") + '","externalId":"w1","hostname":"box-1",'
        '"state":"online","previousState":null,"activeJobs":0,'
        '"timestamp":"2026-03-01T12:00:00.000Z"}'
    )


def test_normalise_queue_snapshot_has_no_id_and_null_consumers():
    name, data = normalise(queue_event(), CONN)
    assert name == c.QUEUE_SNAPSHOT
    assert data == (
        '{"name":"default","depth":3,"consumers":null,"timestamp":"2026-03-01T12:00:00.000Z"}'
    )
    _, data = normalise(queue_event(consumers=0, extensions={}), CONN)
    assert data == (
        '{"name":"default","depth":3,"consumers":0,"timestamp":"2026-03-01T12:00:00.000Z",'
        '"extensions":{}}'
    )


def test_normalise_command_result_adds_the_connection_and_an_empty_detail():
    name, data = normalise(command_event(detail={"newJobId": "n1"}), CONN)
    assert name == c.COMMAND_RESULT
    assert data == (
        '{"commandId":"c1","action":"retry","status":"done","detail":{"newJobId":"n1"},'
        f'"timestamp":"2026-03-01T12:00:00.000Z","connectionId":"{CONN}"}}'
    )
    _, data = normalise(command_event(status="failed"), CONN)
    assert '"detail":{}' in data


def test_the_producer_id_is_not_in_the_data():
    _, data = normalise({**job_event(), "id": "producer-1"}, CONN)
    assert "producer-1" not in data


# -- stable ids ---------------------------------------------------------------------


def test_stable_id_is_uuid5():
    rng = random.Random(7)
    alphabet = "abcXYZ019-_\x00é漢\U0001f600 "
    for _ in range(300):
        ext = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        kind = rng.choice(["job", "worker"])
        expected = str(uuid.uuid5(ID_NAMESPACE, f"{CONN}\x00{kind}\x00{ext}"))
        assert stable_id(CONN, kind, ext) == expected


def test_stable_id_separates_connection_kind_and_external_id():
    ids = {
        stable_id(CONN, "job", "a"),
        stable_id(CONN, "worker", "a"),
        stable_id(CONN, "job", "b"),
        stable_id(str(uuid.UUID(int=1)), "job", "a"),
    }
    assert len(ids) == 4
    assert stable_id(CONN, "job", "a") == stable_id(CONN, "job", "a")


# -- parse_types --------------------------------------------------------------------


def enc(*names):
    return frozenset(n.encode() for n in names)


@pytest.mark.parametrize(
    "raw, selected",
    [
        (None, None),
        ("", None),
        ("   ", None),
        (" , ,", None),
        ("job", enc(c.JOB_STATE_CHANGE)),
        ("worker", enc(c.WORKER_HEARTBEAT, c.WORKER_STATE_CHANGE)),
        ("queue", enc(c.QUEUE_SNAPSHOT)),
        (" job , queue:snapshot ", enc(c.JOB_STATE_CHANGE, c.QUEUE_SNAPSHOT)),
        ("worker:heartbeat,worker:heartbeat", enc(c.WORKER_HEARTBEAT)),
        ("job,worker,queue,command", enc(*c.EVENT_NAMES)),
        ("command", enc(c.COMMAND_RESULT)),
        # Control events are always sent: naming only them selects no stored event.
        ("heartbeat", frozenset()),
        ("heartbeat,stream:reset", frozenset()),
        ("heartbeat,job", enc(c.JOB_STATE_CHANGE)),
    ],
)
def test_parse_types(raw, selected):
    assert parse_types(raw) == selected


@pytest.mark.parametrize(
    "raw, message",
    [
        ("jobs", "Unknown event type: jobs"),
        ("job, Queue ,x", "Unknown event type: Queue, x"),
        ("job:state", "Unknown event type: job:state"),
        ("stream:closed", "Unknown event type: stream:closed"),
        (
            ",".join(f"t{i}" for i in range(12)),
            "Unknown event type: " + ", ".join(f"t{i}" for i in range(10)),
        ),
    ],
)
def test_parse_types_unknown(raw, message):
    with pytest.raises(Invalid) as info:
        parse_types(raw)
    assert info.value.message == message
    assert info.value.details == {
        "types": "each item is one of job, worker, queue, command, command:result, "
        "job:state_change, queue:snapshot, worker:heartbeat, worker:state_change"
    }


def test_parse_types_length_limit():
    at_limit = "job," + " " * (c.MAX_TYPES_LENGTH - 4)
    assert len(at_limit) == c.MAX_TYPES_LENGTH
    assert parse_types(at_limit) == enc(c.JOB_STATE_CHANGE)
    with pytest.raises(Invalid) as info:
        parse_types("job," + " " * c.MAX_TYPES_LENGTH)
    assert info.value.details == {"types": f"at most {c.MAX_TYPES_LENGTH} characters"}


# -- parse_event_id -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, canonical",
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", "0-0"),
        ("1772187000000", "1772187000000-0"),
        ("1772187000000-5", "1772187000000-5"),
        (" 12-3 ", "12-3"),
        ("007-08", "7-8"),
        (str(c.MAX_ID_PART), f"{c.MAX_ID_PART}-0"),
        (f"{c.MAX_ID_PART}-{c.MAX_ID_PART}", f"{c.MAX_ID_PART}-{c.MAX_ID_PART}"),
    ],
)
def test_parse_event_id(raw, canonical):
    assert parse_event_id(raw, "lastEventId") == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "1-2-3",
        "-1",
        "1-",
        "+1",
        "1.5",
        "1 -2",
        "\u0661\u0662\u0663",  # Arabic-Indic digits: int() would take them
        "\uff11-\uff12",  # full-width digits
        "1-\u0662",
        "9" * 21,
    ],
)
def test_parse_event_id_malformed(raw):
    with pytest.raises(Invalid) as info:
        parse_event_id(raw, "Last-Event-ID")
    assert info.value.message == "Malformed event id"
    assert info.value.details == {"Last-Event-ID": "a stream id like 1772187000000-0"}


@pytest.mark.parametrize(
    "raw", [str(c.MAX_ID_PART + 1), f"1-{c.MAX_ID_PART + 1}", "9" * 20, f"{2**64}-0"]
)
def test_parse_event_id_out_of_range(raw):
    with pytest.raises(Invalid) as info:
        parse_event_id(raw, "lastEventId")
    assert info.value.message == "Event id out of range"
    assert info.value.details == {"lastEventId": "each part is at most 2^64-1"}


# -- parse_uuid --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [CONN, CONN.upper(), CONN.replace("-", ""), "{" + CONN + "}"],
)
def test_parse_uuid_canonical(raw):
    assert parse_uuid(raw, "connectionId") == CONN


@pytest.mark.parametrize("raw", [None, "", 5, ["x"]])
def test_parse_uuid_required(raw):
    with pytest.raises(Invalid) as info:
        parse_uuid(raw, "connectionId")
    assert info.value.message == "connectionId is required"
    assert info.value.details == {"connectionId": "required"}


@pytest.mark.parametrize("raw", ["nope", CONN[:-1], CONN + "0", "g" * 32])
def test_parse_uuid_malformed(raw):
    with pytest.raises(Invalid) as info:
        parse_uuid(raw, "id")
    assert info.value.message == "id must be a UUID"
    assert info.value.details == {"id": "not a UUID"}
