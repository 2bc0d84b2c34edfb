"""One client's place in the fan-out (`Listener`) and a batch's shared bytes (`Batch`).

A listener is written to from two sides, and only through its methods: the
hub's reader (`deliver`, `send_now`, `cut_off`, `close`) and the client's
response loop (`take`, via its sink). Its state:

- `pending`: frames queued for the response to write (it was busy);
- `writing`: the response's write may block right now (set by the sink);
- `raw`: once attached, the OS socket the reader writes to directly;
- `partial`: framed bytes a direct send left over, for the response to finish.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from gevent.event import Event

from ..metrics import STREAM_CUTOFFS
from .sockets import shut_down
from .sse import http_chunk

#: A stream entry id as a comparable pair (ms, seq).
EntryId = tuple[int, int]


def parse_id(entry_id: bytes | str) -> EntryId:
    """A stream entry id as a comparable pair."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Listener:
    """One client's place in the fan-out: its filter, its pending frames, its wake-up."""

    __slots__ = (
        "stream_key",
        "types",
        "pending",
        "pending_bytes",
        "writing",
        "wake",
        "limit",
        "closed",
        "close_reason",
        "skip_until",
        "sock",
        "raw",
        "chunked",
        "partial",
        "last_write",
        "clock",
    )

    def __init__(
        self,
        stream_key: bytes,
        types: frozenset[bytes] | None,
        limit: int,
        sock: socket.socket | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_key = stream_key
        self.clock = clock  # the hub's: every time in the fan-out comes from one clock
        self.types = types
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.writing = False  # set by the response while its write may block
        self.wake = Event()
        self.limit = limit
        self.closed = False
        self.close_reason = ""
        self.skip_until: EntryId | None = None
        self.sock = sock
        # Set by the response once it is live (headers sent, history written):
        # the OS socket the fan-out may write to directly, and its framing.
        self.raw: socket.socket | None = None
        self.chunked = True
        self.partial: bytes | None = None  # framed bytes a direct write left over
        self.last_write = clock()

    def deliver(self, frames: list[tuple[bytes, bytes, bytes]], batch: Batch | None = None) -> int:
        """Hand frames (entry id, event, frame) to this listener; the hot path.
        Returns how many it took (for the delivered-events count).

        An idle live listener (nothing pending, no write in progress) is
        written to right here with one non-blocking send; an unfiltered one
        gets the batch's shared, already framed bytes: no wake-up, no greenlet
        switch, no copy per listener. Otherwise the frames are queued and its
        response writes them (joined) itself.
        """
        if self.closed:
            return 0
        types = self.types
        if self.skip_until is not None:
            frames = self._skip(frames)
            batch = None
        idle = (
            self.raw is not None and not self.pending and not self.writing and self.partial is None
        )
        if idle and batch is not None and types is None:
            self.send_now(batch.framed if self.chunked else batch.joined)
            return 0 if self.closed else len(frames)  # closed: the client had gone
        kept = [f for _, ev, f in frames if types is None or ev in types]
        if not kept:
            return 0
        if idle:
            self.send_now(self.framed(b"".join(kept)))
            return 0 if self.closed else len(kept)
        self.pending.extend(kept)
        self.pending_bytes += sum(map(len, kept))
        if self.writing and self.pending_bytes > self.limit:
            self.cut_off()
            return 0
        self.wake.set()
        return len(kept)

    def framed(self, body: bytes) -> bytes:
        """`body` as it goes on this client's wire (an HTTP chunk unless HTTP/1.0)."""
        return http_chunk(body) if self.chunked else body

    @property
    def attached(self) -> bool:
        """Whether the fan-out writes to this client's socket itself (see `sinks`)."""
        return self.raw is not None

    def send_now(self, data: bytes) -> None:
        """One non-blocking send; what the kernel does not take waits in
        `partial` for the response's cooperative write."""
        raw = self.raw
        if raw is None:
            return
        try:
            sent = raw.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.raw = None
            self.close("gone")  # the response ends and cleans up
            return
        self.last_write = self.clock()
        if sent < len(data):
            self.partial = data[sent:]
            self.wake.set()

    def take(self) -> bytes:
        """Everything pending as one chunk (one write for many frames)."""
        chunk = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return chunk

    def _skip(self, frames: list[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
        """Drop frames this client has already seen (it resumed ahead of the hub)."""
        until = self.skip_until
        if until is None:
            return frames
        kept = [f for f in frames if parse_id(f[0]) > until]
        if kept:
            self.skip_until = None
        return kept

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self.wake.set()

    def cut_off(self) -> None:
        """Too far behind: free the buffer and end the response even if its
        write is blocked. The client resumes from its last id."""
        STREAM_CUTOFFS.inc()
        self.pending.clear()
        self.pending_bytes = 0
        self.partial = None
        self.close("overflow")
        self.hang_up()

    def hang_up(self) -> None:
        """Close the client's TCP connection after what was already written.

        The OS socket under gevent's wrapper is shut down: a blocked send then
        fails with EPIPE, which gunicorn treats as a client that left, and an
        ended stream does not linger in HTTP keep-alive (which would hold a
        draining worker for `keepalive` seconds).
        """
        shut_down(self.sock)


class Batch:
    """One read's frames joined (and chunk-framed) once for every listener."""

    __slots__ = ("joined", "framed")

    def __init__(self, frames: list[tuple[bytes, bytes, bytes]]) -> None:
        self.joined = b"".join([f for _, _, f in frames])
        self.framed = http_chunk(self.joined)
