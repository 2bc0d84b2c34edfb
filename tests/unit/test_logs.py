"""sluice/logs.py, pure: the JSON and text formats, request ids, the log context
under concurrent greenlets, and the handler `configure` installs."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import sys
import warnings

import gevent
import pytest

from sluice import logs
from sluice.logs import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure,
    new_request_id,
    request_id_from,
)

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(msg="hello %s", args=("world",), *, exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger("sluice.test").makeRecord(
        "sluice.test", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra or None
    )
    return made


def as_json(rec: logging.LogRecord) -> dict:
    RequestIdFilter().filter(rec)
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "\r" not in line
    assert line.isascii(), "every non-ASCII character is escaped"
    return json.loads(line)


@pytest.fixture(autouse=True)
def no_request_id():
    token = REQUEST_ID.set(None)
    yield
    REQUEST_ID.reset(token)


# -- request ids -----------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["abc", "a" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e", "req_1.2-X", "7"]
)
def test_a_sane_request_id_is_kept(header):
    assert request_id_from(header) == header


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "a" * 129,
        "has space",
        'quote"',
        "new\nline",
        "tab\t",
        "<script>alert(1)</script>",
        '{"level":"error"}',
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits: \w would take them, the pattern does not
        "abc\u2028",
        "semi;colon",
        "trailing\n",
    ],
)
def test_a_hostile_or_missing_request_id_is_replaced(header):
    made = request_id_from(header)
    assert made != header
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_new_ids_differ():
    assert len({new_request_id() for _ in range(1000)}) == 1000


# -- the JSON format ----------------------------------------------------------------


def test_json_has_the_fields():
    out = as_json(record())
    assert set(out) == {"time", "level", "logger", "message", "pid"}
    assert ISO_UTC.fullmatch(out["time"])
    assert out["level"] == "warning" and out["logger"] == "sluice.test"
    assert out["message"] == "hello world"


def test_json_time_is_utc():
    rec = record()
    rec.created = 0.25
    assert as_json(rec)["time"] == "1970-01-01T00:00:00.250Z"


def test_json_carries_the_current_request_id():
    REQUEST_ID.set("req-1")
    assert as_json(record())["request_id"] == "req-1"


def test_a_given_request_id_wins_over_the_context():
    REQUEST_ID.set("req-1")
    assert as_json(record(request_id="given"))["request_id"] == "given"


@pytest.mark.parametrize(
    "message",
    [
        "two\nlines",
        "cr\rlf\r\n",
        "line\u2028separator\u2029paragraph",
        "nel\x85 vt\x0b ff\x0c fs\x1c",
        'quote " and backslash \\',
        "\x00nul",
        "caf\u00e9 \U0001f600",
        "\ud800 lone surrogate",
    ],
)
def test_a_message_never_breaks_the_line(message):
    out = as_json(record("%s", (message,)))
    assert out["message"] == message


def test_an_exception_is_a_field_on_the_same_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        out = as_json(record("failed", (), exc_info=sys.exc_info()))
    assert out["message"] == "failed"
    assert out["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad\nthing" in out["exception"]


def test_a_stack_is_a_field():
    rec = record()
    rec.stack_info = "Stack (most recent call last):\n  File x"
    assert as_json(rec)["stack"] == "Stack (most recent call last):\n  File x"


def test_structured_fields_are_merged_without_replacing_the_core_ones():
    fields = {"status": 404, "path": "/x\ny", "message": "not me", "obj": object()}
    out = as_json(record(**{logs.FIELDS: fields}))
    assert out["status"] == 404 and out["path"] == "/x\ny"
    assert out["message"] == "hello world"
    assert out["obj"].startswith("<object object")


def test_a_bad_log_call_is_still_one_line():
    out = as_json(record("%d items", ("many",)))
    assert out["message"].startswith("%d items [unformattable arguments ('many',)")


# -- the text format ----------------------------------------------------------------------


def test_text_is_human_readable_and_not_json():
    rec = record()
    RequestIdFilter().filter(rec)
    line = TextFormatter().format(rec)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING sluice\.test: hello world", line
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_text_names_the_request_inside_one():
    REQUEST_ID.set("req-7")
    rec = record()
    RequestIdFilter().filter(rec)
    assert TextFormatter().format(rec).endswith(" WARNING sluice.test [req-7]: hello world")


# -- the context under gevent ---------------------------------------------------------------


def test_concurrent_greenlets_each_log_their_own_request_id():
    """Each greenlet (a gunicorn gevent worker's request) has its own context: ids set
    by interleaved greenlets never leak into each other's records."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("sluice.test.greenlets")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    rng = random.Random(7)
    REQUEST_ID.set("outside")

    def request(i: int) -> str | None:
        seen_at_start = REQUEST_ID.get()
        REQUEST_ID.set(f"req-{i}")
        for step in range(3):
            gevent.sleep(rng.random() / 1000)
            log.info("greenlet %d step %d", i, step)
        return seen_at_start

    try:
        greenlets = [gevent.spawn(request, i) for i in range(40)]
        gevent.joinall(greenlets, raise_error=True)
    finally:
        log.removeHandler(handler)
    assert {g.value for g in greenlets} == {None}, "a greenlet starts with no request id"
    assert REQUEST_ID.get() == "outside"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 120
    for line in lines:
        i = int(line["message"].split()[1])
        assert line["request_id"] == f"req-{i}", line
    order = [int(line["message"].split()[1]) for line in lines]
    assert order != sorted(order), "the greenlets interleaved"


# -- configure -------------------------------------------------------------------------------


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("sluice").level)
    yield root
    for handler in root.handlers:
        if handler not in before[0]:
            root.removeHandler(handler)
    root.setLevel(before[1])
    logging.getLogger("sluice").setLevel(before[2])
    logging.captureWarnings(False)


def test_configure_installs_one_handler_and_reformats_it(clean_root):
    stream = io.StringIO()
    ours = [h for h in clean_root.handlers if getattr(h, "_sluice", False)]
    for handler in ours:
        clean_root.removeHandler(handler)
    # An earlier test may have left warnings captured (then `captureWarnings(True)`
    # keeps the showwarning of that time, pytest's recorder, and logs nothing).
    logging.captureWarnings(False)
    try:
        handler = configure("json", stream)
        assert configure("json", stream) is handler
        assert sum(getattr(h, "_sluice", False) for h in clean_root.handlers) == 1
        REQUEST_ID.set("req-9")
        logging.getLogger("sluice.anything").info("app\nlog")
        logging.getLogger("some.library").info("not shown: below WARNING")
        logging.getLogger("some.library").warning("a library's warning")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("careful\nnow", UserWarning, stacklevel=1)
        configure("text", stream)
        logging.getLogger("sluice.anything").info("as text")
    finally:
        logging.captureWarnings(False)
        clean_root.removeHandler(handler)
        for h in ours:
            clean_root.addHandler(h)
    lines = stream.getvalue().splitlines()
    first = [json.loads(line) for line in lines[:3]]
    assert [(o["logger"], o["request_id"]) for o in first] == [
        ("sluice.anything", "req-9"),
        ("some.library", "req-9"),
        ("py.warnings", "req-9"),
    ]
    assert first[0]["message"] == "app\nlog" and first[0]["level"] == "info"
    assert "careful\nnow" in first[2]["message"]
    assert lines[3].endswith(" INFO sluice.anything [req-9]: as text")
    assert len(lines) == 4
