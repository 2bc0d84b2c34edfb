"""The job index's pure parts (`sluice.jobindex`): what the append script is given
per event, the jobs query's parameters, the cursor and a path's job refs.

No Redis: these pin the strings the Lua side relies on byte for byte (the
timeline entry is JSON without its closing brace, to which the script appends
`,"previousState":…}`), and the 400s a query answers, field by field.
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import contract as c
from sluice.errors import Invalid
from sluice.jobindex import (
    INDEX_STRIDE,
    JOB,
    LIFE_STEP,
    NOT_INDEXED,
    QUEUE,
    WORKER,
    JobQuery,
    _timeline_entry,
    event_age,
    index_fields,
    job_refs,
    parse_cursor,
    parse_job_query,
)
from sluice.schema import ID_NAMESPACE, normalised, stable_id
from sluice.strictjson import dumps

CONN = "0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e"
TS = "2026-03-01T12:00:00.000Z"

#: The positions of the index fields of a job, as the append script reads them.
(
    KIND,
    ID,
    STATE,
    QUEUE_F,
    NAME,
    WORKER_F,
    XID,
    ENTRY,
    SENT_PREV,
    AT,
    ARGS,
    KWARGS,
    RESULT,
    TRACE,
    LISTED,
) = range(INDEX_STRIDE)


def job_data(event_type: str = "job_state_change", **job) -> tuple[str, dict]:
    """A producer event through the real normaliser: the exact input shape."""
    payload = {"externalId": "task-1", "name": "tasks.add", "state": "queued", **job}
    key = {"job_state_change": "job", "queue_snapshot": "queue"}.get(event_type, "worker")
    event = {
        "type": event_type,
        "timestamp": TS,
        "framework": "celery",
        "connectionId": CONN,
        key: payload,
    }
    return normalised(event, CONN)


# -- index_fields: jobs -------------------------------------------------------------


def test_a_job_with_every_field_byte_for_byte():
    name, data = job_data(
        externalId="task-1",
        name="tasks.add",
        state="failed",
        previousState="active",
        queue="default",
        workerId="celery@w1",
        attempt=2,
        error="ValueError('boom')",
        stacktrace="Traceback (most recent call last):\nValueError: boom",
        extensions={"args": "(1, 2)", "kwargs": {"x": [3]}, "result": None, "other": 1},
    )
    assert index_fields(name, data) == (
        "j",
        stable_id(CONN, "job", "task-1"),
        "failed",
        "default",
        "tasks.add",
        "celery@w1",
        "task-1",
        '{"state":"failed","timestamp":"2026-03-01T12:00:00.000Z","workerId":"celery@w1",'
        '"attempt":2,"error":"ValueError(\'boom\')"',
        "active",
        "2026-03-01T12:00:00.000Z 00000000000000022",  # age: failed is step 2
        '"(1, 2)"',
        '{"x":[3]}',
        "",  # result null: not sent
        "Traceback (most recent call last):\nValueError: boom",
        # The job as lists show it: its data without the stacktrace, in the
        # stream data's order and form.
        '{"id":"052aa4f6-4427-5a41-b5e5-c8504d5e3ddd","externalId":"task-1",'
        '"name":"tasks.add","state":"failed","previousState":"active",'
        '"timestamp":"2026-03-01T12:00:00.000Z","queue":"default","workerId":"celery@w1",'
        '"attempt":2,"error":"ValueError(\'boom\')","extensions":{"args":"(1, 2)",'
        '"kwargs":{"x":[3]},"result":null,"other":1}}',
    )
    assert stable_id(CONN, "job", "task-1") == "052aa4f6-4427-5a41-b5e5-c8504d5e3ddd"
    assert (
        dumps(data).replace(',"stacktrace":' + dumps(data["stacktrace"]), "")
        == (index_fields(name, data)[LISTED])
    )


def test_a_bare_job_has_empty_fields_and_a_two_key_entry():
    name, data = job_data(state="queued")
    fields = index_fields(name, data)
    assert len(fields) == INDEX_STRIDE
    assert fields[KIND] == JOB == "j"
    assert fields[ID] == data["id"]
    assert fields[XID] == "task-1" and fields[NAME] == "tasks.add" and fields[STATE] == "queued"
    assert fields[ENTRY] == '{"state":"queued","timestamp":"2026-03-01T12:00:00.000Z"'
    for i in (QUEUE_F, WORKER_F, SENT_PREV, ARGS, KWARGS, RESULT, TRACE, LISTED):
        assert fields[i] == "", (i, fields[i])


def test_timeline_entry_keys_come_in_a_fixed_order():
    # Given in another order in the payload, the entry's order is the index's own.
    _, data = job_data(state="active", attempt=3, workerId="w")
    data = {"attempt": data["attempt"], **{k: v for k, v in data.items() if k != "attempt"}}
    entry = index_fields(c.JOB_STATE_CHANGE, data)[ENTRY]
    assert (
        entry
        == '{"state":"active","timestamp":"2026-03-01T12:00:00.000Z","workerId":"w","attempt":3'
    )


@pytest.mark.parametrize("prev", ['"queued"', "null"])
def test_the_entry_plus_the_scripts_suffix_is_one_json_object(prev):
    """What the append script writes: the entry, then `,"previousState":…}`."""
    _, data = job_data(state="failed", error='a "quoted"\nline\u00e9 \U0001f600', workerId="w")
    entry = index_fields(c.JOB_STATE_CHANGE, data)[ENTRY]
    assert entry.startswith("{") and not entry.endswith("}")
    parsed = json.loads(entry + ',"previousState":' + prev + "}")
    assert list(parsed) == ["state", "timestamp", "workerId", "error", "previousState"]
    assert parsed["error"] == 'a "quoted"\nline\u00e9 \U0001f600'
    # Compact and not ASCII-escaped: the same bytes as the stream's data.
    assert '"error":"a \\"quoted\\"\\nline\u00e9 \U0001f600"' in entry


def test_the_timeline_keeps_the_first_500_characters_of_an_error():
    error = "é" * c.MAX_TIMELINE_ERROR + "TAIL"
    _, data = job_data(state="failed", error=error)
    entry = index_fields(c.JOB_STATE_CHANGE, data)[ENTRY]
    assert json.loads(entry + "}")["error"] == "é" * 500
    assert "TAIL" not in entry
    assert data["error"] == error  # the job (stream data) keeps it whole


def test_an_empty_error_is_left_out_of_the_entry():
    _, data = job_data(state="failed", error="")
    assert '"error"' not in index_fields(c.JOB_STATE_CHANGE, data)[ENTRY]


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ({"args": "(1,)", "kwargs": "{}", "result": "3"}, ('"(1,)"', '"{}"', '"3"')),
        ({"args": [1, "é"], "kwargs": {"b": None}, "result": 0}, ('[1,"é"]', '{"b":null}', "0")),
        ({"args": "", "result": False}, ('""', "", "false")),  # empty / false are sent
        ({"args": None, "kwargs": None, "result": None}, ("", "", "")),  # null is not
        ({"celery": {"args": "x"}}, ("", "", "")),  # only extensions' own keys count
        ({}, ("", "", "")),
    ],
)
def test_arguments_and_result_are_json_or_empty(extensions, expected):
    _, data = job_data(extensions=extensions)
    assert index_fields(c.JOB_STATE_CHANGE, data)[ARGS : RESULT + 1] == expected


def test_no_extensions_at_all():
    _, data = job_data()
    assert "extensions" not in data
    assert index_fields(c.JOB_STATE_CHANGE, data)[ARGS : RESULT + 1] == ("", "", "")
    data["extensions"] = None
    assert index_fields(c.JOB_STATE_CHANGE, data)[ARGS : RESULT + 1] == ("", "", "")


@pytest.mark.parametrize("stacktrace", ["", None])
def test_an_empty_or_null_traceback_is_not_sent(stacktrace):
    _, data = job_data(state="failed")
    data["stacktrace"] = stacktrace
    fields = index_fields(c.JOB_STATE_CHANGE, data)
    assert fields[TRACE] == ""
    # Still left out of the job as lists show it.
    assert json.loads(fields[LISTED]) == {k: v for k, v in data.items() if k != "stacktrace"}


def test_without_a_stacktrace_the_listed_job_is_the_data_itself():
    """ "" tells the script to store the stream's data as is (no second copy)."""
    _, data = job_data(state="completed", queue="q", extensions={"result": 3})
    assert "stacktrace" not in data
    assert index_fields(c.JOB_STATE_CHANGE, data)[LISTED] == ""


# -- index_fields: workers, queues, the rest -----------------------------------------


@pytest.mark.parametrize("kind", ["worker_heartbeat", "worker_state_change"])
def test_a_worker_is_its_kind_and_id(kind):
    name, data = job_data(kind, externalId="celery@w1", state="busy", queues=["a"])
    assert name in (c.WORKER_HEARTBEAT, c.WORKER_STATE_CHANGE)
    assert index_fields(name, data) == (
        "w",
        stable_id(CONN, "worker", "celery@w1"),
        *("",) * (INDEX_STRIDE - 2),
    )
    assert WORKER == "w"


def test_a_queue_is_its_kind_and_name():
    name, data = normalised(
        {
            "type": "queue_snapshot",
            "timestamp": TS,
            "framework": "celery",
            "connectionId": CONN,
            "queue": {"name": "emails", "depth": 4},
        },
        CONN,
    )
    assert index_fields(name, data) == ("q", "emails", *("",) * (INDEX_STRIDE - 2))
    assert QUEUE == "q"


# -- event_age ---------------------------------------------------------------------


def test_every_state_has_a_step_in_an_attempt():
    assert set(LIFE_STEP) == set(c.JOB_STATES)
    assert LIFE_STEP["queued"] < LIFE_STEP["active"] < LIFE_STEP["completed"]
    assert LIFE_STEP["scheduled"] == LIFE_STEP["queued"]
    assert {LIFE_STEP[s] for s in ("retrying", "failed", "cancelled")} == {LIFE_STEP["completed"]}


def test_an_events_age_is_its_timestamp_then_attempt_then_step():
    assert event_age({"timestamp": TS, "state": "queued"}) == TS + " 00000000000000010"
    assert event_age({"timestamp": TS, "state": "active", "attempt": 12}) == (
        TS + " 00000000000000121"
    )
    assert event_age({"timestamp": TS, "state": "failed", "attempt": c.MAX_INTEGER}) == (
        f"{TS} {c.MAX_INTEGER:016d}2"
    )


_TIMES = st.sampled_from(
    ["2026-03-01T12:00:00.000Z", "2026-03-01T12:00:00.001Z", "2026-03-01T12:00:01.000Z"]
)
_EVENTS = st.fixed_dictionaries(
    {"timestamp": _TIMES, "state": st.sampled_from(c.JOB_STATES)},
    optional={"attempt": st.integers(1, c.MAX_INTEGER)},
)


@given(_EVENTS, _EVENTS)
def test_age_text_order_is_time_then_attempt_then_step(a, b):
    def key(d):
        return d["timestamp"], d.get("attempt") or 1, LIFE_STEP[d["state"]]

    assert (event_age(a) < event_age(b)) == (key(a) < key(b))
    assert (event_age(a) == event_age(b)) == (key(a) == key(b))


@pytest.mark.parametrize(
    "event",
    [
        c.CLOSED_EVENT,
        c.COMMAND_RESULT,
        c.HEARTBEAT,
        c.STREAM_RESET,
        "job:state",
        "job_state_change",
        "",
    ],
)
def test_other_events_are_not_indexed(event):
    # Whatever the data: an event the index ignores is all empty strings.
    assert index_fields(event, {"id": "x", "name": "y", "state": "queued"}) == NOT_INDEXED
    assert NOT_INDEXED == ("",) * INDEX_STRIDE == ("",) * 15


# -- parse_job_query --------------------------------------------------------------------

GOOD_QUERIES = [
    ({}, JobQuery()),
    ({"state": "failed"}, JobQuery(state="failed")),
    *[({"state": s}, JobQuery(state=s)) for s in c.JOB_STATES],
    ({"state": ""}, JobQuery()),  # empty is the same as none
    ({"queue": "", "name": "", "worker": "", "q": "", "limit": "", "cursor": ""}, JobQuery()),
    (
        {"queue": "default", "name": "tasks.add", "worker": "celery@w1", "q": "ab"},
        JobQuery(queue="default", name="tasks.add", worker="celery@w1", q="ab"),
    ),
    ({"queue": "q" * 1024}, JobQuery(queue="q" * 1024)),
    ({"name": "é" * 1024}, JobQuery(name="é" * 1024)),  # characters, not bytes
    ({"worker": "\U0001f600" * 1024}, JobQuery(worker="\U0001f600" * 1024)),
    ({"q": "a\x00b"}, JobQuery(q="a\x00b")),  # NUL is valid Unicode
    ({"queue": " "}, JobQuery(queue=" ")),  # not trimmed
    ({"limit": "1"}, JobQuery(limit=1)),
    ({"limit": "200"}, JobQuery(limit=200)),
    ({"limit": "0200"}, JobQuery(limit=200)),
    ({"limit": "07"}, JobQuery(limit=7)),
    ({"cursor": "0"}, JobQuery(cursor=0)),
    ({"cursor": "48213"}, JobQuery(cursor=48213)),
    ({"cursor": str(2**53)}, JobQuery(cursor=2**53)),
    ({"unknown": "x", "limit ": "0", "State": "bogus"}, JobQuery()),  # unknown: ignored
    (
        {"state": "retrying", "queue": "q", "limit": "10", "cursor": "5"},
        JobQuery(state="retrying", queue="q", limit=10, cursor=5),
    ),
]


@pytest.mark.parametrize(("args", "expected"), GOOD_QUERIES)
def test_good_queries(args, expected):
    assert parse_job_query(args) == expected


def test_the_defaults_are_the_contracts():
    assert JobQuery().limit == c.JOBS_PAGE_DEFAULT == 50
    assert parse_job_query({}).cursor is None


BAD_QUERIES = [
    ({"state": "exploded"}, {"state"}),
    ({"state": "FAILED"}, {"state"}),
    ({"state": " failed"}, {"state"}),
    ({"state": "failed\x00"}, {"state"}),
    ({"state": "x" * 2000}, {"state"}),
    ({"state": "\ud800"}, {"state"}),
    *[({key: "x" * 1025}, {key}) for key in ("queue", "name", "worker", "q")],
    *[({key: "a\ud800b"}, {key}) for key in ("queue", "name", "worker", "q")],
    *[({key: "\udfff"}, {key}) for key in ("queue", "name", "worker", "q")],
    ({"limit": "0"}, {"limit"}),
    ({"limit": "000"}, {"limit"}),
    ({"limit": "201"}, {"limit"}),
    ({"limit": "-1"}, {"limit"}),
    ({"limit": "+5"}, {"limit"}),
    ({"limit": "1.5"}, {"limit"}),
    ({"limit": "5.0"}, {"limit"}),
    ({"limit": "1e2"}, {"limit"}),
    ({"limit": "0x10"}, {"limit"}),
    ({"limit": " 5"}, {"limit"}),
    ({"limit": "5 "}, {"limit"}),
    ({"limit": "x"}, {"limit"}),
    ({"limit": "\u0665"}, {"limit"}),  # Arabic-Indic 5: a digit, not an ASCII one
    ({"limit": "\uff15"}, {"limit"}),  # fullwidth 5
    ({"limit": "\u00b2"}, {"limit"}),  # superscript 2: str.isdigit() says yes
    ({"limit": "00005"}, {"limit"}),  # more than 4 characters
    ({"limit": "9" * 5000}, {"limit"}),
    ({"limit": "\ud800"}, {"limit"}),
    ({"cursor": "-1"}, {"cursor"}),
    ({"cursor": "1.5"}, {"cursor"}),
    ({"cursor": str(2**53 + 1)}, {"cursor"}),
    ({"cursor": "9" * 30}, {"cursor"}),
    ({"cursor": "\u0661\u0662"}, {"cursor"}),
    ({"cursor": "abc"}, {"cursor"}),
    ({"cursor": "\ud800"}, {"cursor"}),
    # Every bad parameter is named at once.
    (
        {
            "state": "nope",
            "queue": "\ud800",
            "name": "n" * 1025,
            "worker": "w" * 1025,
            "q": "\udc00",
            "limit": "0",
            "cursor": "-5",
        },
        {"state", "queue", "name", "worker", "q", "limit", "cursor"},
    ),
    ({"state": "failed", "limit": "500"}, {"limit"}),  # the good ones are not named
]


@pytest.mark.parametrize(("args", "fields"), BAD_QUERIES)
def test_bad_queries_name_each_bad_parameter(args, fields):
    with pytest.raises(Invalid) as raised:
        parse_job_query(args)
    assert set(raised.value.details) == fields
    assert all(isinstance(v, str) and v for v in raised.value.details.values())


def test_the_limit_message_gives_the_range():
    with pytest.raises(Invalid) as raised:
        parse_job_query({"limit": "0"})
    assert raised.value.details["limit"] == "an integer from 1 to 200"


def test_a_repeated_parameter_counts_once_the_first_time():
    """As Flask's request.args give it (a MultiDict): the first value is the one checked."""
    from werkzeug.datastructures import MultiDict

    assert parse_job_query(MultiDict([("limit", "5"), ("limit", "x")])).limit == 5
    assert parse_job_query(MultiDict([("state", "failed"), ("state", "bogus")])).state == "failed"
    with pytest.raises(Invalid) as raised:
        parse_job_query(MultiDict([("limit", "x"), ("limit", "5")]))
    assert set(raised.value.details) == {"limit"}


# -- parse_cursor ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0),
        ("1", 1),
        ("0000000000000001", 1),  # 16 characters
        ("9007199254740991", 2**53 - 1),
        ("9007199254740992", 2**53),
    ],
)
def test_cursor_bounds_good(raw, expected):
    details: dict[str, str] = {}
    assert parse_cursor(raw, details) == expected
    assert details == {}


@pytest.mark.parametrize(
    "raw",
    [
        "9007199254740993",  # 2^53 + 1
        "9999999999999999",  # 16 digits, above 2^53
        "00000000000000001",  # 17 characters, small value
        "18446744073709551615",
        "-0",
        "-1",
        " 1",
        "1 ",
        "1-0",
        "\u0661",
        "\uff11",
        "\u00b9",
    ],
)
def test_cursor_bounds_bad(raw):
    details: dict[str, str] = {"other": "kept"}
    assert parse_cursor(raw, details) is None
    assert details == {"other": "kept", "cursor": "a nextCursor from a previous page"}


# -- job_refs -------------------------------------------------------------------------------


def uuid5_of(connection_id: str, external_id: str) -> str:
    """The documented derivation, computed with the uuid module (not stable_id)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{connection_id}\x00job\x00{external_id}"))


@pytest.mark.parametrize(
    "ref",
    [
        "task-1",
        "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "a/b",
        " ",
        "\x00",
        "é\U0001f600",
        "x" * c.MAX_EXTERNAL_ID,
        "\U0001f600" * c.MAX_EXTERNAL_ID,  # characters, not bytes
    ],
)
def test_job_refs_are_the_id_then_the_external_ids_job(ref):
    refs = job_refs(CONN, ref)
    assert refs == (ref, uuid5_of(CONN, ref))
    assert refs[1] == stable_id(CONN, "job", ref)


def test_job_refs_depend_on_the_connection():
    other = "6f1c0c57-0cf4-4c38-9d3b-6c1e8c1c9c2a"
    assert job_refs(CONN, "task-1")[1] != job_refs(other, "task-1")[1]
    # ... and on the kind: a worker with the same external id is another id.
    assert job_refs(CONN, "task-1")[1] != stable_id(CONN, "worker", "task-1")


@pytest.mark.parametrize(
    "ref",
    ["", "x" * (c.MAX_EXTERNAL_ID + 1), "\ud800", "a\udfffb", "\udc00\ud800", "x" * 2000],
)
def test_bad_job_refs_are_invalid(ref):
    with pytest.raises(Invalid) as raised:
        job_refs(CONN, ref)
    assert set(raised.value.details) == {"job"}


# The timeline entry is written directly, not through `dumps`: the same text.
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(c.JOB_STATES),
    worker=st.none() | _TEXT,
    attempt=st.none() | st.integers(min_value=0, max_value=2**53),
    error=st.none() | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=700),
)
def test_timeline_entry_is_the_json_of_the_entry(state, worker, attempt, error):
    data = {"state": state, "timestamp": "2026-02-27T10:30:00.123Z"}
    if worker is not None:
        data["workerId"] = worker
    if attempt is not None:
        data["attempt"] = attempt
    if error is not None:
        data["error"] = error
    entry = {"state": state, "timestamp": data["timestamp"]}
    for key in ("workerId", "attempt"):
        if data.get(key) is not None:
            entry[key] = data[key]
    if error:
        entry["error"] = error[: c.MAX_TIMELINE_ERROR]
    written = _timeline_entry(data)
    assert written == dumps(entry)[:-1]
    assert json.loads(written + "}") == entry
