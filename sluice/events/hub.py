"""Shared Redis readers and fan-out, one hub per worker process.

One greenlet per process blocks on a single ``XREAD`` over every stream that
has listeners in this process; Redis connections grow with processes, not with
viewers. Each batch of entries becomes SSE frames once, joined and
chunk-framed once (`Batch`), and every idle listener gets those same bytes
with one non-blocking send from the reader itself: no wake-up, no greenlet
switch, no copy per listener. Only a listener that is busy (catching up, or
its kernel buffer full) queues frames for its own greenlet to write.

Heartbeats come from one ticker per process, not a timer per stream: every
quarter interval it sends the same bytes to each listener that has been quiet
for three quarters of it. A failed send ends the stream (the dead-client
detector).

A listener whose write is blocked (the client is not reading) while more
than ``listener_buffer_bytes`` pile up is cut off: its buffer is freed and
its socket shut down so the blocked write returns at once. It reconnects with
``Last-Event-ID`` and catches up from history, so it loses nothing and never
holds more than its buffer.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import gevent
import redis
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from ..config import Settings
from ..redis import Keys, connect_blocking
from .sse import CLOSED_EVENT as _CLOSED
from .sse import ENTRY_DATA, ENTRY_EVENT, cached_heartbeat, control_frame, event_frame, http_chunk

log = logging.getLogger("sluice.hub")

CLOSED_EVENT = _CLOSED.encode()
READ_COUNT = 1_000
#: Fan-out yields to other greenlets after this many listeners, for fairness.
FANOUT_YIELD_EVERY = 256


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
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
    )

    def __init__(
        self,
        stream_key: bytes,
        types: frozenset[bytes] | None,
        limit: int,
        sock: socket.socket | None = None,
    ) -> None:
        self.stream_key = stream_key
        self.types = types
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.writing = False  # set by the response while its write may block
        self.wake = Event()
        self.limit = limit
        self.closed = False
        self.close_reason = ""
        self.skip_until: tuple[int, int] | None = None
        self.sock = sock
        # Set by the response once it is live (headers sent, history written):
        # the OS socket the fan-out may write to directly, and its framing.
        self.raw: socket.socket | None = None
        self.chunked = True
        self.partial: bytes | None = None  # framed bytes a direct write left over
        self.last_write = time.monotonic()

    def deliver(self, frames: list[tuple[bytes, bytes, bytes]], batch: Batch | None = None) -> None:
        """Hand frames (entry id, event, frame) to this listener; the hot path.

        An idle live listener (nothing pending, no write in progress) is
        written to right here with one non-blocking send; an unfiltered one
        gets the batch's shared, already framed bytes: no wake-up, no greenlet
        switch, no copy per listener. Otherwise the frames are queued and its
        response writes them (joined) itself.
        """
        if self.closed:
            return
        types = self.types
        if self.skip_until is not None:
            frames = self._skip(frames)
            batch = None
        idle = (
            self.raw is not None and not self.pending and not self.writing and self.partial is None
        )
        if idle and batch is not None and types is None:
            self.send_now(batch.framed if self.chunked else batch.joined)
            return
        kept = [f for _, ev, f in frames if types is None or ev in types]
        if not kept:
            return
        if idle:
            self.send_now(self.framed(b"".join(kept)))
            return
        self.pending.extend(kept)
        self.pending_bytes += sum(map(len, kept))
        if self.writing and self.pending_bytes > self.limit:
            self.cut_off()
        else:
            self.wake.set()

    def framed(self, body: bytes) -> bytes:
        """`body` as it goes on this client's wire (an HTTP chunk unless HTTP/1.0)."""
        return http_chunk(body) if self.chunked else body

    def send_now(self, data: bytes) -> None:
        """One non-blocking send; what the kernel does not take waits in
        `partial` for the response's cooperative write."""
        try:
            sent = self.raw.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.raw = None
            self.close("gone")  # the response ends and cleans up
            return
        self.last_write = time.monotonic()
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
        if self.sock is not None:
            try:
                getattr(self.sock, "_sock", self.sock).shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Batch:
    """One XREAD batch's frames joined (and chunk-framed) once for every listener."""

    __slots__ = ("joined", "framed")

    def __init__(self, frames: list[tuple[bytes, bytes, bytes]]) -> None:
        self.joined = b"".join([f for _, _, f in frames])
        self.framed = http_chunk(self.joined)


class _Stream:
    __slots__ = ("cursor", "listeners")

    def __init__(self, cursor: bytes) -> None:
        self.cursor = cursor
        self.listeners: set[Listener] = set()


class Subscription:
    """What `Hub.subscribe` hands the response: the listener plus the history to send first."""

    __slots__ = ("listener", "reset_reason", "catchup_from", "catchup_to")

    def __init__(
        self,
        listener: Listener,
        reset_reason: str | None,
        catchup_from: bytes | None,
        catchup_to: bytes | None,
    ) -> None:
        self.listener = listener
        self.reset_reason = reset_reason
        self.catchup_from = catchup_from
        self.catchup_to = catchup_to


class Draining(Exception):
    """The process is shutting down and takes no new streams."""


class TooManyStreams(Exception):
    """A connection has as many open streams in this process as allowed."""


class Hub:
    """Per-process shared reader and fan-out."""

    def __init__(self, settings: Settings, client: redis.Redis, redis_url: str) -> None:
        self.settings = settings
        self.redis = client
        self._redis_url = redis_url
        self._blocking: redis.Redis | None = None
        self._streams: dict[bytes, _Stream] = {}
        self._reader: gevent.Greenlet | None = None
        self._ticker: gevent.Greenlet | None = None
        # Stream opens doing their Redis work (auth, ownership, subscribe) at once.
        # A burst of reconnects (a deploy, a network blip) would otherwise have
        # every greenlet holding a pooled Redis connection at the same moment:
        # the pool would refuse (503) or grow to the burst's size and keep those
        # connections (~50 KB of worker RSS each). Queued opens wait their turn.
        self.opening = BoundedSemaphore(settings.stream_open_concurrency)
        self._wake_key = f"sluice:hub:{uuid.uuid4()}:wake".encode()
        # A concrete id, not "$": a wake that lands before the first read still counts.
        self._wake_cursor = b"0-0"
        self.draining = False
        self.listener_count = 0

    # -- joining and leaving -------------------------------------------------

    def subscribe(
        self,
        connection_id: str,
        last_event_id: str | None,
        types: frozenset[bytes] | None,
        sock: socket.socket | None = None,
    ) -> Subscription:
        """Register a listener positioned after `last_event_id` (or at the tail).

        Redis is asked first (that yields); the registration itself runs
        without yielding, so the hub's cursor cannot move in between and the
        live feed joins history with no gap and no duplicate.
        """
        if self.draining:
            raise Draining()
        key = Keys.stream(connection_id).encode()
        stream = self._streams.get(key)
        if stream is not None and len(stream.listeners) >= self.settings.max_streams_per_connection:
            raise TooManyStreams()
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        first_entries, last_entries = pipe.execute()
        first = parse_id(first_entries[0][0]) if first_entries else None
        tail = last_entries[0][0] if last_entries else b"0-0"

        reset_reason: str | None = None
        if last_event_id is None:
            position = tail
        else:
            wanted = parse_id(last_event_id)
            position = f"{wanted[0]}-{wanted[1]}".encode()
            if wanted == (0, 0):
                pass  # "from the beginning": every retained event, no reset
            elif wanted > parse_id(tail):
                reset_reason, position = "unknown_event_id", tail
            elif first is not None and wanted < first:
                reset_reason = "history_trimmed"

        if self.draining:
            raise Draining()
        listener = Listener(key, types, self.settings.listener_buffer_bytes, sock)
        catchup_from = catchup_to = None
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(position)
            needs_wake = True
        else:
            needs_wake = False
            hub_at = parse_id(stream.cursor)
            at = parse_id(position)
            if at < hub_at:
                catchup_from, catchup_to = position, stream.cursor
            elif at > hub_at:
                listener.skip_until = at
        stream.listeners.add(listener)
        self.listener_count += 1
        self._ensure_reader()
        if needs_wake:
            self._wake_reader()
        return Subscription(listener, reset_reason, catchup_from, catchup_to)

    def unsubscribe(self, listener: Listener) -> None:
        stream = self._streams.get(listener.stream_key)
        if stream is None or listener not in stream.listeners:
            return
        stream.listeners.discard(listener)
        self.listener_count -= 1
        if not stream.listeners:
            del self._streams[listener.stream_key]

    def history(
        self, listener: Listener, after: bytes, until: bytes | None
    ) -> Iterator[list[bytes]]:
        """Frames of retained entries after `after` (up to `until`), in pages."""
        key = listener.stream_key
        start = b"(" + after
        end = until if until is not None else b"+"
        batch = self.settings.catchup_batch
        while True:
            entries = self.redis.xrange(key, min=start, max=end, count=batch)
            if not entries:
                return
            frames = []
            for entry_id, fields in entries:
                event = fields.get(ENTRY_EVENT, b"")
                if event == CLOSED_EVENT:
                    listener.close("connection_deleted")
                    break
                if listener.types is None or event in listener.types:
                    frames.append(event_frame(entry_id, event, fields.get(ENTRY_DATA, b"")))
            yield frames
            if listener.closed or len(entries) < batch:
                return
            start = b"(" + entries[-1][0]

    def drain(self, reason: str = "shutdown") -> int:
        """End every stream of this process (they reconnect elsewhere and resume)."""
        self.draining = True
        count = 0
        for stream in list(self._streams.values()):
            for listener in list(stream.listeners):
                listener.close(reason)
                count += 1
        return count

    def stats(self) -> dict[str, Any]:
        return {
            "streams": len(self._streams),
            "listeners": self.listener_count,
            "readerAlive": bool(self._reader and not self._reader.dead),
            "draining": self.draining,
        }

    # -- the shared reader ---------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read_forever)
        if self._ticker is None or self._ticker.dead:
            self._ticker = gevent.spawn(self._heartbeat_forever)

    # -- heartbeats ------------------------------------------------------------

    def _heartbeat_forever(self) -> None:
        """One timer per process instead of one per stream.

        Every quarter interval, each live listener (socket attached, nothing
        pending, no write in progress) that has been quiet for at least
        three quarters of the interval gets the same heartbeat bytes with one
        non-blocking send, so none waits more than `heartbeat_seconds` and
        a busy stream gets none. A failed send ends that stream: this is also
        the dead-client detector. Listeners not attached (history, a blocked
        write, a yield-path response) keep their own timed wait.
        """
        interval = self.settings.heartbeat_seconds
        tick = interval / 4
        while True:
            gevent.sleep(tick)
            try:
                self.beat(interval - tick)
            except Exception:  # never let one bad listener stop every heartbeat
                log.exception("heartbeat ticker failed; continuing")

    def beat(self, quiet_for: float) -> int:
        """Send a heartbeat to every attached listener quiet for `quiet_for` s."""
        frame = cached_heartbeat()
        chunked = http_chunk(frame)
        now = time.monotonic()
        sent = 0
        for stream in list(self._streams.values()):
            for listener in list(stream.listeners):
                if (
                    listener.raw is None
                    or listener.writing
                    or listener.pending
                    or listener.partial is not None
                    or listener.closed
                    or now - listener.last_write < quiet_for
                ):
                    continue
                listener.send_now(chunked if listener.chunked else frame)
                sent += 1
                if sent % FANOUT_YIELD_EVERY == 0:
                    gevent.sleep(0)
                    now = time.monotonic()
        return sent

    def _wake_reader(self) -> None:
        """Interrupt the blocked XREAD so it picks up a newly watched stream."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=1, approximate=False)
            pipe.expire(self._wake_key, 3600)
            pipe.execute()
        except redis.RedisError as exc:  # the reader retries on its own schedule
            log.warning("could not wake the stream reader: %s", exc)

    def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._read_once()
                backoff = 0.1
            except redis.RedisError as exc:
                log.warning("stream reader: redis error %s; retrying in %.1fs", exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("stream reader failed; restarting")
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _read_once(self) -> None:
        if self._blocking is None:
            self._blocking = connect_blocking(self._redis_url, self.settings.read_block_ms / 1000)
        watched = dict(self._streams)
        wanted: dict[bytes, bytes] = {k: s.cursor for k, s in watched.items()}
        wanted[self._wake_key] = self._wake_cursor
        # How long one XREAD blocks: new streams wake it earlier, so this only
        # bounds how often an idle reader goes round its loop.
        try:
            reply = self._blocking.xread(
                wanted, count=READ_COUNT, block=self.settings.read_block_ms
            )
        except redis.ResponseError as exc:
            # Redis refused the whole read because of one key (a wrong type at
            # a stream's key, a bad cursor, a key that moved): find it, end its
            # streams alone, and go on at once for everyone else.
            self._isolate(wanted, watched, exc)
            return
        for key, entries in reply or ():
            if key == self._wake_key:
                self._wake_cursor = entries[-1][0]
                continue
            stream = self._streams.get(key)
            # A stream dropped and re-added while we were blocked has a new
            # cursor: this reply is relative to the old one, so skip it and
            # let the next read start from the right place.
            if stream is not None and stream is watched.get(key) and entries:
                try:
                    self._dispatch(stream, entries)
                except Exception:  # one stream's entries must not stop the others
                    log.exception("stream reader: could not deliver %r; ending its streams", key)
                    self._drop(key, stream)

    def _isolate(
        self, wanted: dict[bytes, bytes], watched: dict[bytes, _Stream], error: redis.ResponseError
    ) -> None:
        """Read each key alone (no blocking) to find the ones Redis refuses, and
        drop them. If every key fails, the fault is not one stream's: re-raise
        (the reader backs off)."""
        keys = list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xread({key: wanted[key]}, count=1)
        results = pipe.execute(raise_on_error=False)
        bad = [
            key for key, result in zip(keys, results, strict=True) if isinstance(result, Exception)
        ]
        if not bad or len(bad) == len(keys):
            raise error
        for key in bad:
            if key == self._wake_key:
                log.warning("stream reader: wake key unusable (%s); using a new one", error)
                self._wake_key = f"sluice:hub:{uuid.uuid4()}:wake".encode()
                self._wake_cursor = b"0-0"
                continue
            log.warning("stream reader: Redis refuses %r (%s); ending its streams", key, error)
            stream = watched.get(key)
            # Only the stream that was read: one subscribed meanwhile (the
            # pipeline yields) starts from a fresh, checked cursor.
            if stream is not None and self._streams.get(key) is stream:
                self._drop(key, stream)

    def _drop(self, key: bytes, stream: _Stream) -> None:
        """Stop watching one stream: its clients are hung up and reconnect
        (and get a clear error if the fault persists)."""
        if self._streams.get(key) is stream:
            del self._streams[key]
        for listener in list(stream.listeners):
            stream.listeners.discard(listener)
            self.listener_count -= 1
            listener.close("stream_error")
            listener.hang_up()

    def _dispatch(self, stream: _Stream, entries: Iterable[tuple[bytes, dict]]) -> None:
        frames: list[tuple[bytes, bytes, bytes]] = []
        closed = False
        last_id = stream.cursor
        for entry_id, fields in entries:
            last_id = entry_id
            event = fields.get(ENTRY_EVENT, b"")
            if event == CLOSED_EVENT:
                closed = True
                break
            frame = event_frame(entry_id, event, fields.get(ENTRY_DATA, b""))
            frames.append((entry_id, event, frame))
        stream.cursor = last_id
        listeners = list(stream.listeners)
        batch = Batch(frames) if frames else None
        for i, listener in enumerate(listeners, 1):
            if frames:
                listener.deliver(frames, batch)
            if closed:
                listener.close("connection_deleted")
            if i % FANOUT_YIELD_EVERY == 0:
                gevent.sleep(0)


def reset_frame(reason: str) -> bytes:
    return control_frame("stream:reset", {"reason": reason})
