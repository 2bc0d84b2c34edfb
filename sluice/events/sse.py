"""The wire formats of the stream: one function for each, pinned by tests.

A Redis Stream entry holds two fields, ``t`` (the SSE event name) and ``d``
(the JSON data exactly as clients will see it), so a frame is built by
concatenation: no JSON work per event on the way out, and the same bytes go
to every listener.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..timefmt import now_iso

ENTRY_EVENT = b"t"
ENTRY_DATA = b"d"
#: The entry that ends every stream of a deleted connection (never sent to clients).
CLOSED_EVENT = "stream:closed"


def encode_entry_fields(event: str, data_json: str) -> dict[str, str]:
    """The Redis Stream entry for one event."""
    return {"t": event, "d": data_json}


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(data: Any) -> str:
    """Compact JSON, the form stored in entries and sent in frames.

    One encoder for the process: `json.dumps` with these options builds a new
    JSONEncoder on every call (same output, measurable cost per ingested event).
    """
    return _encode(data)


def event_frame(entry_id: bytes, event: bytes, data: bytes) -> bytes:
    """One stored event as an SSE frame; its `id:` is the Redis Stream entry id."""
    return b"id: " + entry_id + b"\nevent: " + event + b"\ndata: " + data + b"\n\n"


def http_chunk(body: bytes) -> bytes:
    """HTTP/1.1 chunked framing exactly as gunicorn writes a yielded chunk, so the
    stream can write to the socket itself and the bytes on the wire stay the same."""
    return b"%X\r\n%s\r\n" % (len(body), body)


def control_frame(event: str, data: Any) -> bytes:
    """An event that is not in the stream (no `id:`, so it never moves the resume point)."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


def heartbeat_frame() -> bytes:
    return control_frame("heartbeat", {"timestamp": now_iso()})


_heartbeat_cache: list = [0.0, b""]


def cached_heartbeat() -> bytes:
    """The heartbeat frame, encoded at most every 50 ms for the whole process
    (thousands of idle streams share the same bytes, as they share events)."""
    now = time.monotonic()
    if now - _heartbeat_cache[0] >= 0.05:
        _heartbeat_cache[0] = now
        _heartbeat_cache[1] = heartbeat_frame()
    return _heartbeat_cache[1]


def retry_frame(retry_ms: int) -> bytes:
    """The first bytes of every stream: tells EventSource how soon to reconnect and
    lets `onopen` fire at once."""
    return f"retry: {int(retry_ms)}\n\n".encode()
