"""Each wire format lives in one function; these pin them byte for byte."""

from __future__ import annotations

import re
import uuid

import pytest

from sluice.fanout.sse import (
    control_frame,
    event_frame,
    heartbeat_frame,
    http_chunk,
    retry_frame,
)
from sluice.schema import ID_NAMESPACE, stable_id
from sluice.store.events import entry_fields as encode_entry_fields
from sluice.strictjson import dumps
from sluice.timefmt import iso_from_ms, parse_iso
from sluice.web.errors import error_body


def test_event_frame():
    assert event_frame(b"1772187000000-0", b"job:state_change", b'{"id":"a"}') == (
        b'id: 1772187000000-0\nevent: job:state_change\ndata: {"id":"a"}\n\n'
    )


def test_control_frames_have_no_id():
    assert control_frame("stream:reset", {"reason": "history_trimmed"}) == (
        b'event: stream:reset\ndata: {"reason":"history_trimmed"}\n\n'
    )
    beat = heartbeat_frame()
    assert re.fullmatch(
        rb'event: heartbeat\ndata: \{"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}\n\n',
        beat,
    )


def test_retry_frame():
    assert retry_frame(2000) == b"retry: 2000\n\n"


def test_http_chunk_matches_gunicorn_framing():
    assert http_chunk(b"hello") == b"5\r\nhello\r\n"
    assert http_chunk(b"x" * 26) == b"1A\r\n" + b"x" * 26 + b"\r\n"


def test_redis_entry_fields():
    assert encode_entry_fields("queue:snapshot", '{"name":"q"}') == {
        "t": "queue:snapshot",
        "d": '{"name":"q"}',
    }


def test_dumps_is_compact_and_keeps_unicode():
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'


def test_error_body():
    assert error_body("NOT_FOUND", "Connection not found") == (
        b'{"error":{"code":"NOT_FOUND","message":"Connection not found","details":{}}}'
    )
    assert error_body("VALIDATION_ERROR", "bad", {"events[0].type": "x"}) == (
        b'{"error":{"code":"VALIDATION_ERROR","message":"bad","details":{"events[0].type":"x"}}}'
    )


@pytest.mark.parametrize("external_id", ["a", "celery-task-1", "ünïcødé ✓", "x" * 512])
def test_stable_id_is_uuid5(external_id):
    cid = "65b7cafb-5808-4319-b6db-8ebabbc4533c"
    expected = str(uuid.uuid5(ID_NAMESPACE, f"{cid}\x00job\x00{external_id}"))
    assert stable_id(cid, "job", external_id) == expected
    assert stable_id(cid, "worker", external_id) != expected


@pytest.mark.parametrize(
    "raw, wire",
    [
        ("2026-02-27T10:30:00Z", "2026-02-27T10:30:00.000Z"),
        ("2026-02-27T10:30:00.123456+00:00", "2026-02-27T10:30:00.123Z"),
        ("2026-02-27T11:30:00+01:00", "2026-02-27T10:30:00.000Z"),
        ("2026-02-27T10:30:00", "2026-02-27T10:30:00.000Z"),
        ("yesterday", None),
        ("", None),
    ],
)
def test_timestamps_are_utc_millis_z(raw, wire):
    assert parse_iso(raw) == wire


def test_iso_from_ms():
    assert iso_from_ms(1772187000000) == "2026-02-27T10:10:00.000Z"
