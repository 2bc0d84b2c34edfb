"""The shared reader and the fan-out, one hub per worker process.

Producers' appends also publish a notification naming the stream (sharded
pub/sub). One greenlet per process listens for the notifications of every
stream that has listeners here; another reads only the streams that were
notified, from their cursors, in one ``XREAD`` per round, so the work per
event does not grow with the number of watched streams. The stream stays the
only source of truth: a subscription just confirmed (at a new stream, after
any reconnect) counts as a notification, and every watched stream is read
again every ``read_block_ms`` whatever was notified, so a lost notification
delays an event, never loses it. Redis connections grow with processes, not
with viewers or tenants. Each batch of entries becomes SSE frames once, joined and
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
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from .. import contract
from ..config import Settings
from ..errors import StoreRefused, StoreUnavailable, TooMany, Unavailable
from ..metrics import EVENTS_DELIVERED, FANOUT_LAG, HUB_READS, REDIS_ERRORS, STREAMS_OPEN
from .listener import Batch, EntryId, Listener, parse_id
from .sse import cached_heartbeat, event_frame, http_chunk

log = logging.getLogger("sluice.hub")

CLOSED_EVENT = contract.CLOSED_EVENT.encode()
ENTRY_EVENT = contract.ENTRY_EVENT.encode()
ENTRY_DATA = contract.ENTRY_DATA.encode()
READ_COUNT = 1_000
#: Seconds the listener waits for notifications before it sends the subscriptions
#: asked for meanwhile (it is the only user of the pub/sub connection).
NOTIFY_WAIT = 0.05
#: Fan-out yields to other greenlets after this many listeners, for fairness.
FANOUT_YIELD_EVERY = 256


class _Stream:
    __slots__ = ("cursor", "listeners", "connection_id", "caught_up")

    def __init__(self, cursor: bytes, connection_id: str) -> None:
        self.cursor = cursor
        self.connection_id = connection_id
        self.listeners: set[Listener] = set()
        # Until a read returns less than a full page, what is read is history
        # (a client resumed from far back): not counted as fan-out lag.
        self.caught_up = False


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


class _Backoff:
    """Around one round of a forever-loop: a failure is logged and waited out
    (0.1 s, doubling to 5 s) instead of ending the loop; a success resets it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.delay = 0.1

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        if kind is None:
            self.delay = 0.1
            return False
        if not issubclass(kind, Exception):
            return False  # GreenletExit, KeyboardInterrupt: let it end the loop
        if isinstance(exc, StoreUnavailable):
            REDIS_ERRORS.inc()
            log.warning("%s: %s; again in %.1fs", self.what, exc, self.delay)
        else:
            log.error("%s failed; again in %.1fs", self.what, self.delay, exc_info=exc)
        gevent.sleep(self.delay)
        self.delay = min(self.delay * 2, 5.0)
        return True


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

    def bounds(self, key: bytes) -> tuple[bytes | None, bytes | None]: ...

    def range(self, key: bytes, after: bytes, until: bytes | None, count: int) -> list[Entry]: ...

    def read(self, cursors: dict[bytes, bytes], count: int) -> list[tuple[bytes, list[Entry]]]:
        """Entries after each cursor, without waiting."""
        ...

    def refused(self, cursors: dict[bytes, bytes]) -> list[bytes]: ...

    def listen(self, connection_id: str) -> None:
        """Ask for notifications of the connection's stream (never raises)."""
        ...

    def unlisten(self, connection_id: str) -> None: ...

    def notifications(self, timeout: float) -> list[bytes]:
        """Stream keys notified (or whose subscription was confirmed) since the last
        call, waiting up to `timeout` s; `StoreUnavailable` when the subscription
        was lost (the next call subscribes again)."""
        ...


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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.events = events
        self.clock = clock
        # Seconds since the epoch, to compare with an entry id's milliseconds.
        self.wall_clock = wall_clock
        self._streams: dict[bytes, _Stream] = {}
        self._reader: gevent.Greenlet | None = None
        self._listener: gevent.Greenlet | None = None
        self._ticker: gevent.Greenlet | None = None
        # Streams to read in the reader's next round, and its wake-up.
        self._dirty: set[bytes] = set()
        self._ready = Event()
        self.reads = 0  # XREAD rounds, for stats
        # Stream opens doing their Redis work (auth, ownership, subscribe) at once.
        # A burst of reconnects (a deploy, a network blip) would otherwise have
        # every greenlet holding a pooled Redis connection at the same moment:
        # the pool would refuse (503) or grow to the burst's size and keep those
        # connections (~50 KB of worker RSS each). Queued opens wait their turn.
        self.opening = BoundedSemaphore(settings.stream_open_concurrency)
        self.draining = False

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
        new = stream is None
        if stream is None:
            stream = self._streams[key] = _Stream(decision.position, connection_id)
            # Read from the tail: what it reads is live from the start.
            stream.caught_up = decision.position == (last or b"0-0")
        stream.listeners.add(listener)
        STREAMS_OPEN.inc()
        self._ensure_reader()
        if new:
            # Read it at once (what came since `bounds`), and again when the
            # subscription is confirmed (what came before it took effect).
            self._mark(key)
            self.events.listen(connection_id)
        return Subscription(
            listener, decision.reset_reason, decision.catchup_from, decision.catchup_to
        )

    def unsubscribe(self, listener: Listener) -> None:
        stream = self._streams.get(listener.stream_key)
        if stream is None or listener not in stream.listeners:
            return
        stream.listeners.discard(listener)
        STREAMS_OPEN.dec()
        if not stream.listeners:
            del self._streams[listener.stream_key]
            self.events.unlisten(stream.connection_id)

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
            "listeners": sum(len(s.listeners) for s in self._streams.values()),
            "readerAlive": bool(self._reader and not self._reader.dead),
            "reads": self.reads,
            "draining": self.draining,
        }

    # -- the shared reader ---------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read_forever)
        if self._listener is None or self._listener.dead:
            self._listener = gevent.spawn(self._listen_forever)
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

    def _mark(self, key: bytes) -> None:
        """Have the reader read this stream in its next round."""
        self._dirty.add(key)
        self._ready.set()

    def _listen_forever(self) -> None:
        """Notifications -> streams to read. After a lost subscription the store
        subscribes again, and every confirmed subscription marks its stream."""
        backoff = _Backoff("notifications")
        while True:
            with backoff:
                keys = self.events.notifications(timeout=NOTIFY_WAIT)
                if keys:
                    self._dirty.update(keys)
                    self._ready.set()

    def _read_forever(self) -> None:
        backoff = _Backoff("stream reader")
        sweep = self.settings.read_block_ms / 1000
        next_sweep = self.clock() + sweep
        while True:
            self._ready.wait(max(0.0, next_sweep - self.clock()))
            self._ready.clear()
            keys, self._dirty = self._dirty, set()
            if self.clock() >= next_sweep:
                # The safety net: every watched stream, notified or not.
                keys.update(self._streams)
                next_sweep = self.clock() + sweep
            if not keys:
                continue
            with backoff:
                try:
                    self._read_once(keys)
                except Exception:
                    self._dirty.update(keys)  # read them again once Redis is back
                    raise
            if self._dirty:
                self._ready.set()

    def _read_once(self, keys: set[bytes]) -> None:
        """One XREAD of the given streams from their cursors, and the fan-out."""
        watched = {k: self._streams[k] for k in keys if k in self._streams}
        if not watched:
            return
        wanted: dict[bytes, bytes] = {k: s.cursor for k, s in watched.items()}
        self.reads += 1
        HUB_READS.inc()
        try:
            reply = self.events.read(wanted, READ_COUNT)
        except StoreRefused as exc:
            # Redis refused the whole read because of one key (a wrong type at
            # a stream's key, a bad cursor, a key that moved): find it, end its
            # streams alone, and read the others again at once.
            self._isolate(wanted, watched, exc)
            return
        # Metrics, counted once per round whatever the number of streams and clients.
        delivered = 0
        oldest: int | None = None  # ms of the oldest live entry fanned out
        for key, entries in reply:
            stream = self._streams.get(key)
            # A stream dropped and re-added while we were reading has a new
            # cursor: this reply is relative to the old one, so skip it and
            # let the next read start from the right place.
            if stream is not None and stream is watched.get(key) and entries:
                try:
                    count, first_ms = self._dispatch(stream, entries)
                except Exception:  # one stream's entries must not stop the others
                    log.exception("stream reader: could not deliver %r; ending its streams", key)
                    self._drop(key, stream)
                    continue
                delivered += count
                if first_ms is not None and (oldest is None or first_ms < oldest):
                    oldest = first_ms
                if len(entries) >= READ_COUNT:
                    self._dirty.add(key)  # more waiting: next round
                else:
                    stream.caught_up = True
        if delivered:
            EVENTS_DELIVERED.inc(delivered)
        if oldest is not None:
            # An entry id's milliseconds are its append time (Redis's clock).
            FANOUT_LAG.observe(max(0.0, self.wall_clock() - oldest / 1000))

    def _isolate(
        self, wanted: dict[bytes, bytes], watched: dict[bytes, _Stream], error: Exception
    ) -> None:
        """Read each key alone to find the ones Redis refuses, and drop them; the
        others are read again in the next round. If several keys were read and
        every one fails, the fault is not one stream's: re-raise (the reader
        backs off). A lone key Redis refuses is that stream's fault."""
        bad = self.events.refused(wanted)
        if not bad or (len(bad) == len(wanted) > 1):
            raise error  # counted by the reader's backoff
        REDIS_ERRORS.inc()
        for key in bad:
            log.warning("stream reader: Redis refuses %r (%s); ending its streams", key, error)
            stream = watched.get(key)
            # Only the stream that was read: one subscribed meanwhile (the
            # pipeline yields) starts from a fresh, checked cursor.
            if stream is not None and self._streams.get(key) is stream:
                self._drop(key, stream)
        self._dirty.update(k for k in wanted if k not in bad)

    def _drop(self, key: bytes, stream: _Stream) -> None:
        """Stop watching one stream: its clients are hung up and reconnect
        (and get a clear error if the fault persists)."""
        if self._streams.get(key) is stream:
            del self._streams[key]
            self.events.unlisten(stream.connection_id)
        for listener in list(stream.listeners):
            stream.listeners.discard(listener)
            STREAMS_OPEN.dec()
            listener.close("stream_error")
            listener.hang_up()

    def _dispatch(self, stream: _Stream, entries: Iterable[Entry]) -> tuple[int, int | None]:
        """Fan the entries out to the stream's listeners: (frames the listeners
        took, the milliseconds of the oldest entry when this counts as fan-out
        lag, else None)."""
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
        delivered = 0
        for i, listener in enumerate(listeners, 1):
            if frames:
                delivered += listener.deliver(frames, batch)
            if closed:
                listener.close("connection_deleted")
            if i % FANOUT_YIELD_EVERY == 0:
                gevent.sleep(0)
        lag = frames and listeners and stream.caught_up
        return delivered, parse_id(frames[0][0])[0] if lag else None
