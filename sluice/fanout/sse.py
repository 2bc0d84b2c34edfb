"""The wire formats of the stream: one function for each, pinned by tests.

A stored entry holds the SSE event name and the JSON data exactly as clients
will see it (`contract.ENTRY_EVENT`, `contract.ENTRY_DATA`), so a frame is
built by concatenation: no JSON work per event on the way out, and the same
bytes go to every listener.
"""

from __future__ import annotations

import time
from typing import Any

from ..contract import HEARTBEAT, STREAM_RESET
from ..strictjson import dumps
from ..timefmt import now_iso


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
    return control_frame(HEARTBEAT, {"timestamp": now_iso()})


_heartbeat_cache: list[Any] = [0.0, b""]


def cached_heartbeat() -> bytes:
    """The heartbeat frame, encoded at most every 50 ms for the whole process
    (thousands of idle streams share the same bytes, as they share events)."""
    now = time.monotonic()
    if now - _heartbeat_cache[0] >= 0.05:
        _heartbeat_cache[0] = now
        _heartbeat_cache[1] = heartbeat_frame()
    frame: bytes = _heartbeat_cache[1]
    return frame


def retry_frame(retry_ms: int) -> bytes:
    """The first bytes of every stream: tells EventSource how soon to reconnect and
    lets `onopen` fire at once."""
    return f"retry: {int(retry_ms)}\n\n".encode()


def reset_frame(reason: str) -> bytes:
    """Sent first when the client's resume point cannot be honoured (see `hub.resume`)."""
    return control_frame(STREAM_RESET, {"reason": reason})
