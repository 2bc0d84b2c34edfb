"""Helpers of the fan-out's unit tests: event names as bytes, frames, the heartbeat
pattern, and reading exactly n bytes from a socket pair."""

from __future__ import annotations

import re

import gevent

from sluice import contract
from sluice.fanout.sse import event_frame

JOB = contract.JOB_STATE_CHANGE.encode()
QUEUE = contract.QUEUE_SNAPSHOT.encode()
WORKER = contract.WORKER_HEARTBEAT.encode()

#: A heartbeat frame, its timestamp in the wire format.
HEARTBEAT = re.compile(
    rb'event: heartbeat\ndata: \{"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}\n\n'
)


def frame(n: int, event: bytes = JOB) -> tuple[bytes, bytes, bytes]:
    """(entry id, event, SSE frame) of the n-th entry, as the hub hands them out."""
    entry_id = b"%d-0" % n
    return entry_id, event, event_frame(entry_id, event, b'{"n":%d}' % n)


def recv_exactly(sock, n: int, timeout: float = 2.0) -> bytes:
    """n bytes from `sock`; fails if the peer closes first or they take too long."""
    data = b""
    with gevent.Timeout(timeout):
        while len(data) < n:
            chunk = sock.recv(min(n - len(data), 1 << 16))
            assert chunk, "connection closed early"
            data += chunk
    return data
