"""The shared reader and the fan-out, one hub per worker process.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
from gevent.lock import BoundedSemaphore

from .. import contract
from ..config import Settings
from ..errors import StoreRefused, StoreUnavailable, TooMany, Unavailable
from .listener import Batch, EntryId, Listener, parse_id
from .sse import cached_heartbeat, event_frame, http_chunk

log = logging.getLogger("sluice.hub")

CLOSED_EVENT = contract.CLOSED_EVENT.encode()
ENTRY_EVENT = contract.ENTRY_EVENT.encode()
ENTRY_DATA = contract.ENTRY_DATA.encode()
READ_COUNT = 1_000
#: Fan-out yields to other greenlets after this many listeners, for fairness.
FANOUT_YIELD_EVERY = 256


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


class Draining(Unavailable):
    """The process is shutting down and takes no new streams."""

    def __init__(self) -> None:
        super().__init__("Server is restarting; retry", retry_after=1)


class TooManyStreams(TooMany):
    """A connection has as many open streams in this process as allowed."""

    def __init__(self) -> None:
        super().__init__("Too many open streams for this connection", retry_after=5)


#: One stored entry: (entry id, {field: value}).
Entry = tuple[bytes, dict[bytes, bytes]]


class EventLog(Protocol):
    """What the hub reads (`sluice.store.events.RedisEventLog` on Redis; an
    in-memory one in the unit tests)."""

    def stream_key(self, connection_id: str) -> bytes: ...

    def new_wake_key(self) -> bytes: ...

    def bounds(self, key: bytes) -> tuple[bytes | None, bytes | None]: ...

    def range(self, key: bytes, after: bytes, until: bytes | None, count: int) -> list[Entry]: ...

    def read(
        self, cursors: dict[bytes, bytes], count: int, block_ms: int
    ) -> list[tuple[bytes, list[Entry]]]: ...

    def refused(self, cursors: dict[bytes, bytes]) -> list[bytes]: ...

    def wake(self, key: bytes) -> None: ...


@dataclass(frozen=True)
class Resume:
    """Where a new listener starts, decided by `resume`."""

    #: The stream position the listener is at (its next event comes after it).
    position: bytes
    #: Why the stream starts with `stream:reset`, if it does.
    reset_reason: str | None = None
    #: Retained entries in (catchup_from, catchup_to] to send from history first.
    catchup_from: bytes | None = None
    catchup_to: bytes | None = None
    #: Live entries up to this id were already seen by the client: skip them.
    skip_until: EntryId | None = None


def resume(
    last_event_id: str | None,
    first: bytes | None,
    last: bytes | None,
    hub_cursor: bytes | None,
) -> Resume:
    """The resume decision, pure: a client that sent `last_event_id` (None: start
    at the tail) on a stream holding entries `first`..`last` (None: empty),
    which this process reads from `hub_cursor` (None: not read yet, it will be
    read from the returned position).

    History and live join with no gap and no duplicate: a client behind the hub
    gets history up to the hub's cursor; one ahead of it skips what it has seen.
    """
    tail = last if last is not None else b"0-0"
    reset_reason: str | None = None
    if last_event_id is None:
        position = tail
    else:
        wanted = parse_id(last_event_id)
        position = f"{wanted[0]}-{wanted[1]}".encode()
        if wanted == (0, 0):
            pass  # "from the beginning": every retained event, no reset
        elif wanted > parse_id(tail):
            reset_reason, position = contract.RESET_UNKNOWN_EVENT_ID, tail
        elif first is not None and wanted < parse_id(first):
            reset_reason = contract.RESET_HISTORY_TRIMMED
    if hub_cursor is None:
        return Resume(position, reset_reason)
    at, hub_at = parse_id(position), parse_id(hub_cursor)
    if at < hub_at:
        return Resume(position, reset_reason, catchup_from=position, catchup_to=hub_cursor)
    if at > hub_at:
        return Resume(position, reset_reason, skip_until=at)
    return Resume(position, reset_reason)


class Hub:
    """Per-process shared reader and fan-out."""

    def __init__(
        self,
        settings: Settings,
        events: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.events = events
        self.clock = clock
        self._streams: dict[bytes, _Stream] = {}
        self._reader: gevent.Greenlet | None = None
        self._ticker: gevent.Greenlet | None = None
        # Stream opens doing their Redis work (auth, ownership, subscribe) at once.
        # A burst of reconnects (a deploy, a network blip) would otherwise have
        # every greenlet holding a pooled Redis connection at the same moment:
        # the pool would refuse (503) or grow to the burst's size and keep those
        # connections (~50 KB of worker RSS each). Queued opens wait their turn.
        self.opening = BoundedSemaphore(settings.stream_open_concurrency)
        self._wake_key = events.new_wake_key()
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

        The store is asked first (that yields); the registration itself runs
        without yielding, so the hub's cursor cannot move in between and the
        live feed joins history with no gap and no duplicate (see `resume`).
        """
        if self.draining:
            raise Draining()
        key = self.events.stream_key(connection_id)
        stream = self._streams.get(key)
        if stream is not None and len(stream.listeners) >= self.settings.max_streams_per_connection:
            raise TooManyStreams()
        first, last = self.events.bounds(key)
        if self.draining:
            raise Draining()
        # From here to the end, nothing yields.
        stream = self._streams.get(key)
        decision = resume(last_event_id, first, last, stream.cursor if stream else None)
        listener = Listener(key, types, self.settings.listener_buffer_bytes, sock, self.clock)
        listener.skip_until = decision.skip_until
        needs_wake = stream is None
        if stream is None:
            stream = self._streams[key] = _Stream(decision.position)
        stream.listeners.add(listener)
        self.listener_count += 1
        self._ensure_reader()
        if needs_wake:
            self._wake_reader()
        return Subscription(
            listener, decision.reset_reason, decision.catchup_from, decision.catchup_to
        )

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
        batch = self.settings.catchup_batch
        while True:
            entries = self.events.range(key, after, until, batch)
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
            after = entries[-1][0]

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
        now = self.clock()
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
                    now = self.clock()
        return sent

    def _wake_reader(self) -> None:
        """Interrupt the blocked XREAD so it picks up a newly watched stream."""
        try:
            self.events.wake(self._wake_key)
        except StoreUnavailable as exc:  # the reader retries on its own schedule
            log.warning("could not wake the stream reader: %s", exc)

    def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._read_once()
                backoff = 0.1
            except StoreUnavailable as exc:
                log.warning("stream reader: redis error %s; retrying in %.1fs", exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("stream reader failed; restarting")
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _read_once(self) -> None:
        watched = dict(self._streams)
        wanted: dict[bytes, bytes] = {k: s.cursor for k, s in watched.items()}
        wanted[self._wake_key] = self._wake_cursor
        # How long one XREAD blocks: new streams wake it earlier, so this only
        # bounds how often an idle reader goes round its loop.
        try:
            reply = self.events.read(wanted, READ_COUNT, self.settings.read_block_ms)
        except StoreRefused as exc:
            # Redis refused the whole read because of one key (a wrong type at
            # a stream's key, a bad cursor, a key that moved): find it, end its
            # streams alone, and go on at once for everyone else.
            self._isolate(wanted, watched, exc)
            return
        for key, entries in reply:
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
        self, wanted: dict[bytes, bytes], watched: dict[bytes, _Stream], error: Exception
    ) -> None:
        """Read each key alone (no blocking) to find the ones Redis refuses, and
        drop them. If every key fails, the fault is not one stream's: re-raise
        (the reader backs off)."""
        bad = self.events.refused(wanted)
        if not bad or len(bad) == len(wanted):
            raise error
        for key in bad:
            if key == self._wake_key:
                log.warning("stream reader: wake key unusable (%s); using a new one", error)
                self._wake_key = self.events.new_wake_key()
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

    def _dispatch(self, stream: _Stream, entries: Iterable[Entry]) -> None:
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
