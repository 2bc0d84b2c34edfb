"""The hub: the pure resume decision, and the shared reader and fan-out driven by an
in-memory event log (no Redis) with listeners on socket pairs."""

from __future__ import annotations

import itertools
import re
import time

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event

from sluice import contract
from sluice.config import load_settings
from sluice.errors import SluiceError, StoreRefused, StoreUnavailable, TooMany, Unavailable
from sluice.fanout.hub import Draining, Hub, Resume, TooManyStreams, resume
from sluice.fanout.listener import parse_id
from sluice.fanout.sse import event_frame, http_chunk
from sluice.web.errors import status_of
from tests.unit.wire import HEARTBEAT, JOB, QUEUE, WORKER, recv_exactly

# -- resume(): the decision table ---------------------------------------------------------


@pytest.mark.parametrize(
    "last_event_id, first, last, hub_cursor, expected",
    [
        # No id: start at the tail.
        (None, b"5-0", b"9-0", None, Resume(b"9-0")),
        (None, None, None, None, Resume(b"0-0")),
        # 0 / 0-0: every retained event, no reset, even when history was trimmed.
        ("0-0", b"5-0", b"9-0", None, Resume(b"0-0")),
        ("0-0", None, None, None, Resume(b"0-0")),
        # Within the retained history.
        ("5-0", b"5-0", b"9-0", None, Resume(b"5-0")),
        ("9-0", b"5-0", b"9-0", None, Resume(b"9-0")),
        ("7-3", b"5-0", b"9-0", None, Resume(b"7-3")),
        # Beyond the tail: reset, at the tail.
        ("9-1", b"5-0", b"9-0", None, Resume(b"9-0", contract.RESET_UNKNOWN_EVENT_ID)),
        ("100-0", b"5-0", b"9-0", None, Resume(b"9-0", contract.RESET_UNKNOWN_EVENT_ID)),
        # Empty stream: any id but 0 is unknown.
        ("3-0", None, None, None, Resume(b"0-0", contract.RESET_UNKNOWN_EVENT_ID)),
        # Before the first retained entry: trimmed, from where the client is.
        ("4-9", b"5-0", b"9-0", None, Resume(b"4-9", contract.RESET_HISTORY_TRIMMED)),
        ("1-0", b"5-0", b"9-0", None, Resume(b"1-0", contract.RESET_HISTORY_TRIMMED)),
        # Ids compare as numbers, not strings.
        ("9-5", b"9-0", b"10-0", None, Resume(b"9-5")),
        ("5-10", b"5-9", b"5-20", None, Resume(b"5-10")),
        ("10-0", b"9-0", b"9-10", None, Resume(b"9-10", contract.RESET_UNKNOWN_EVENT_ID)),
    ],
)
def test_resume_without_a_hub_cursor(last_event_id, first, last, hub_cursor, expected):
    assert resume(last_event_id, first, last, hub_cursor) == expected


@pytest.mark.parametrize(
    "last_event_id, first, last, hub_cursor, expected",
    [
        # Behind the hub: history (position, hub cursor], then live.
        ("6-0", b"5-0", b"9-0", b"9-0", Resume(b"6-0", None, b"6-0", b"9-0")),
        ("0-0", b"5-0", b"9-0", b"8-0", Resume(b"0-0", None, b"0-0", b"8-0")),
        (
            "3-0",
            b"5-0",
            b"9-0",
            b"9-0",
            Resume(b"3-0", contract.RESET_HISTORY_TRIMMED, b"3-0", b"9-0"),
        ),
        ("9-0", b"5-0", b"10-0", b"10-0", Resume(b"9-0", None, b"9-0", b"10-0")),
        # Ahead of the hub (entries it has not read yet): skip what was seen.
        (None, b"5-0", b"9-0", b"7-0", Resume(b"9-0", skip_until=(9, 0))),
        ("8-2", b"5-0", b"9-0", b"7-0", Resume(b"8-2", skip_until=(8, 2))),
        ("10-0", b"5-0", b"10-0", b"9-0", Resume(b"10-0", skip_until=(10, 0))),
        (
            "12-0",
            b"5-0",
            b"9-0",
            b"7-0",
            Resume(b"9-0", contract.RESET_UNKNOWN_EVENT_ID, skip_until=(9, 0)),
        ),
        # At the hub cursor: live only.
        (None, b"5-0", b"9-0", b"9-0", Resume(b"9-0")),
        ("7-0", b"5-0", b"9-0", b"7-0", Resume(b"7-0")),
        (None, None, None, b"0-0", Resume(b"0-0")),
    ],
)
def test_resume_against_the_hub_cursor(last_event_id, first, last, hub_cursor, expected):
    assert resume(last_event_id, first, last, hub_cursor) == expected


# -- an in-memory event log ---------------------------------------------------------------


class MemoryLog:
    """`EventLog` over python dicts, with notifications as the store sends them:
    `append` notifies the listened streams, `listen` confirms at once (which
    counts as a notification), and `notifications` waits on a gevent Event.
    Keys in `refusing` make `read` raise `StoreRefused` as Redis does for a wrong
    type; `silent` drops notifications (a lost message)."""

    def __init__(self) -> None:
        self.streams: dict[bytes, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self.refusing: set[bytes] = set()
        self.listening: set[bytes] = set()
        self.silent = False
        self.reads = 0
        self._ms = itertools.count(1000)
        self._notified: list[bytes] = []
        self._arrived = Event()

    # Writing (the test's side).
    def append(self, key: bytes, event: bytes, data: bytes = b"{}") -> bytes:
        entry_id = b"%d-0" % next(self._ms)
        fields = {contract.ENTRY_EVENT.encode(): event, contract.ENTRY_DATA.encode(): data}
        self.streams.setdefault(key, []).append((entry_id, fields))
        if key in self.listening and not self.silent:
            self._notify(key)
        return entry_id

    def _notify(self, key: bytes) -> None:
        self._notified.append(key)
        self._arrived.set()

    # The protocol.
    def stream_key(self, connection_id: str) -> bytes:
        return b"events:" + connection_id.encode()

    def bounds(self, key: bytes) -> tuple[bytes | None, bytes | None]:
        entries = self.streams.get(key)
        if not entries:
            return None, None
        return entries[0][0], entries[-1][0]

    def range(self, key, after, until, count):
        low, high = parse_id(after), None if until is None else parse_id(until)
        return [
            e
            for e in self.streams.get(key, [])
            if parse_id(e[0]) > low and (high is None or parse_id(e[0]) <= high)
        ][:count]

    def read(self, cursors, count):
        self.reads += 1
        if self.refusing & set(cursors):
            raise StoreRefused("WRONGTYPE Operation against a key holding the wrong kind")
        reply = []
        for key, cursor in cursors.items():
            after = parse_id(cursor)
            new = [e for e in self.streams.get(key, []) if parse_id(e[0]) > after][:count]
            if new:
                reply.append((key, new))
        return reply

    def refused(self, cursors):
        return [key for key in cursors if key in self.refusing]

    def listen(self, connection_id: str) -> None:
        key = self.stream_key(connection_id)
        self.listening.add(key)
        self._notify(key)  # the subscription's confirmation

    def unlisten(self, connection_id: str) -> None:
        self.listening.discard(self.stream_key(connection_id))

    def notifications(self, timeout: float) -> list[bytes]:
        if not self._notified:
            self._arrived.clear()
            self._arrived.wait(timeout)
        keys, self._notified = self._notified, []
        return keys


def fields_of(entry):
    return entry[1][b"t"], entry[1][b"d"]


class Clock:
    """The hub's injected clock: monotonic time moved on at will. (Listeners stamp
    `last_write` with `time.monotonic()` themselves, so the two must agree.)"""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def log():
    return MemoryLog()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_hub(log, clock):
    hubs = []

    def make(**overrides):
        settings = load_settings(environ={}, overrides={"read_block_ms": 5_000, **overrides})
        hub = Hub(settings, log, clock=clock)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        gevent.killall([g for g in (hub._reader, hub._listener, hub._ticker) if g is not None])


@pytest.fixture
def hub(make_hub):
    return make_hub()


@pytest.fixture
def pairs():
    opened = []

    def make():
        a, b = gsocket.socketpair()
        opened.extend((a, b))
        return a, b

    yield make
    for s in opened:
        s.close()


def attach(subscription, sock) -> None:
    """What `SocketSink.attach` does: the reader now writes to the OS socket itself."""
    subscription.listener.raw = sock._sock


def recv_eof(sock, timeout: float = 2.0) -> bytes:
    data = b""
    with gevent.Timeout(timeout):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def nothing_waiting(sock) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def frame_of(log: MemoryLog, key: bytes, entry_id: bytes) -> bytes:
    for eid, fields in log.streams[key]:
        if eid == entry_id:
            return event_frame(eid, fields[b"t"], fields[b"d"])
    raise KeyError(entry_id)


def live(hub, log, pairs, connection="c1", types=None, last_event_id=None):
    """A subscribed, attached listener and the socket end its client reads."""
    server, client = pairs()
    sub = hub.subscribe(connection, last_event_id, types, server)
    attach(sub, server)
    return sub, client


# -- live fan-out -----------------------------------------------------------------------------


def test_live_fanout_sends_identical_bytes_to_every_listener(hub, log, pairs):
    sub1, client1 = live(hub, log, pairs)
    sub2, client2 = live(hub, log, pairs)
    key = log.stream_key("c1")
    ids = [log.append(key, JOB, b'{"n":%d}' % i) for i in range(3)]
    expected = http_chunk(b"".join(frame_of(log, key, i) for i in ids))
    got1 = recv_exactly(client1, len(expected))
    got2 = recv_exactly(client2, len(expected))
    assert got1 == got2 == expected
    # One chunk per read: the next entry is its own chunk.
    next_id = log.append(key, QUEUE, b'{"q":1}')
    expected = http_chunk(frame_of(log, key, next_id))
    assert recv_exactly(client1, len(expected)) == expected
    assert recv_exactly(client2, len(expected)) == expected
    assert hub.stats()["listeners"] == 2 and hub.stats()["streams"] == 1


def test_a_connection_gets_only_its_own_events(hub, log, pairs):
    sub_a, client_a = live(hub, log, pairs, "a")
    sub_b, client_b = live(hub, log, pairs, "b")
    b_id = log.append(log.stream_key("b"), JOB, b'{"b":1}')
    a_id = log.append(log.stream_key("a"), JOB, b'{"a":1}')
    want_a = http_chunk(frame_of(log, log.stream_key("a"), a_id))
    want_b = http_chunk(frame_of(log, log.stream_key("b"), b_id))
    assert recv_exactly(client_a, len(want_a)) == want_a
    assert recv_exactly(client_b, len(want_b)) == want_b
    assert nothing_waiting(client_a) and nothing_waiting(client_b)


def test_a_filtered_listener_gets_only_its_types(hub, log, pairs):
    _, everything = live(hub, log, pairs)
    _, queues = live(hub, log, pairs, types=frozenset({QUEUE}))
    key = log.stream_key("c1")
    ids = [
        log.append(key, JOB, b"{}"),
        log.append(key, QUEUE, b'{"depth":1}'),
        log.append(key, WORKER, b"{}"),
        log.append(key, QUEUE, b'{"depth":2}'),
    ]
    all_bytes = http_chunk(b"".join(frame_of(log, key, i) for i in ids))
    assert recv_exactly(everything, len(all_bytes)) == all_bytes
    only = http_chunk(frame_of(log, key, ids[1]) + frame_of(log, key, ids[3]))
    assert recv_exactly(queues, len(only)) == only
    # Nothing else came in between: the next bytes are exactly the next queue frame.
    log.append(key, JOB, b"{}")
    last = log.append(key, QUEUE, b'{"depth":3}')
    expected = http_chunk(frame_of(log, key, last))
    assert recv_exactly(queues, len(expected)) == expected


def test_history_joins_live_without_gap_or_duplicate(hub, log, pairs):
    """A client resuming behind the hub gets history up to the hub's cursor, then
    live entries after it: every entry once, in order."""
    key = log.stream_key("c1")
    _, watcher = live(hub, log, pairs)
    first = [log.append(key, JOB, b'{"n":%d}' % i) for i in range(3)]
    want = http_chunk(b"".join(frame_of(log, key, i) for i in first))
    assert recv_exactly(watcher, len(want)) == want  # the hub's cursor is at first[-1]
    # More entries arrive; the reader has not run yet when the client subscribes.
    arriving = [log.append(key, JOB, b'{"n":%d}' % i) for i in range(3, 5)]
    sub = hub.subscribe("c1", first[0].decode(), None)
    assert (sub.reset_reason, sub.catchup_from, sub.catchup_to) == (None, first[0], first[-1])
    listener = sub.listener
    history = [f for page in hub.history(listener, sub.catchup_from, sub.catchup_to) for f in page]
    # The reader delivers what arrived; the listener is not attached yet: it queues.
    with gevent.Timeout(2):
        listener.wake.wait()
    later = log.append(key, JOB, b'{"n":5}')
    want = http_chunk(b"".join(frame_of(log, key, i) for i in arriving))
    want += http_chunk(frame_of(log, key, later))
    assert recv_exactly(watcher, len(want)) == want  # the reader has delivered `later` too
    sent = b"".join(history) + listener.take()
    expected = [*first[1:], *arriving, later]
    assert sent == b"".join(frame_of(log, key, i) for i in expected)


def test_a_client_ahead_of_the_hub_skips_what_it_has_seen(hub, log, pairs):
    key = log.stream_key("c1")
    _, watcher = live(hub, log, pairs)
    seen = [log.append(key, JOB, b'{"n":%d}' % i) for i in range(3)]
    # The reader has not read these yet (hub cursor behind); the client saw all three.
    sub = hub.subscribe("c1", seen[-1].decode(), None)
    assert sub.catchup_from is None and sub.reset_reason is None
    new = log.append(key, JOB, b'{"n":3}')
    want = http_chunk(b"".join(frame_of(log, key, i) for i in [*seen, new]))
    assert recv_exactly(watcher, len(want)) == want
    assert sub.listener.take() == frame_of(log, key, new)


def test_history_pages_and_stops_at_the_closing_entry(make_hub, log):
    hub = make_hub(catchup_batch=2)
    key = log.stream_key("c1")
    ids = [log.append(key, JOB if i % 2 else QUEUE, b'{"n":%d}' % i) for i in range(5)]
    log.append(key, contract.CLOSED_EVENT.encode())
    log.append(key, JOB, b"{}")  # never reached
    sub = hub.subscribe("c1", "0", frozenset({JOB}))
    pages = list(hub.history(sub.listener, b"0-0", None))
    assert pages == [
        [frame_of(log, key, ids[1])],
        [frame_of(log, key, ids[3])],
        [],
    ]
    assert sub.listener.closed and sub.listener.close_reason == "connection_deleted"


# -- ending streams -------------------------------------------------------------------------


def test_the_closing_entry_closes_every_listener_of_the_stream(hub, log, pairs):
    key = log.stream_key("c1")
    sub1, client1 = live(hub, log, pairs)
    sub2 = hub.subscribe("c1", None, None)  # not attached: it queues
    sub_other, client_other = live(hub, log, pairs, "c2")
    before = log.append(key, JOB, b'{"last":true}')
    log.append(key, contract.CLOSED_EVENT.encode(), b"")
    with gevent.Timeout(2):
        sub2.listener.wake.wait()
    for sub in (sub1, sub2):
        assert sub.listener.closed
        assert sub.listener.close_reason == "connection_deleted"
    # What came before it was delivered; the closing entry itself never is.
    want = http_chunk(frame_of(log, key, before))
    assert recv_exactly(client1, len(want)) == want
    assert nothing_waiting(client1)
    assert sub2.listener.take() == frame_of(log, key, before)
    assert not sub_other.listener.closed


def test_a_refused_key_ends_only_its_own_streams(hub, log, pairs):
    bad_key, good_key = log.stream_key("bad"), log.stream_key("good")
    bad, bad_client = live(hub, log, pairs, "bad")
    good, good_client = live(hub, log, pairs, "good")
    log.refusing.add(bad_key)
    entry = log.append(good_key, JOB, b'{"ok":1}')
    want = http_chunk(frame_of(log, good_key, entry))
    assert recv_exactly(good_client, len(want)) == want
    assert bad.listener.closed and bad.listener.close_reason == "stream_error"
    assert recv_eof(bad_client) == b""  # hung up
    assert not good.listener.closed
    assert hub.stats()["streams"] == 1 and hub.stats()["listeners"] == 1
    # And the others keep receiving.
    entry = log.append(good_key, QUEUE, b'{"ok":2}')
    want = http_chunk(frame_of(log, good_key, entry))
    assert recv_exactly(good_client, len(want)) == want


def test_when_every_key_of_a_read_is_refused_nothing_is_dropped(make_hub, log, pairs):
    """Several streams, all refused: Redis's fault, not theirs (the reader backs off)."""
    hub = make_hub()
    sub1, _client1 = live(hub, log, pairs, connection="c1")
    sub2, _client2 = live(hub, log, pairs, connection="c2")
    keys = {log.stream_key("c1"), log.stream_key("c2")}
    log.refusing.update(keys)
    with pytest.raises(StoreRefused):
        hub._read_once(keys)
    assert not sub1.listener.closed and not sub2.listener.closed
    assert hub.stats()["listeners"] == 2


def test_a_lone_refused_stream_is_ended_without_stalling_the_reader(make_hub, log, pairs):
    """A round often reads one notified stream: when Redis refuses it, that stream
    ends (its clients reconnect and get a clear error) and nothing is raised."""
    hub = make_hub()
    sub, client = live(hub, log, pairs)
    log.refusing.add(log.stream_key("c1"))
    hub._read_once({log.stream_key("c1")})
    assert sub.listener.closed and sub.listener.close_reason == "stream_error"
    assert recv_eof(client) == b""
    assert hub.stats()["listeners"] == 0


def test_unsubscribe_forgets_the_stream(hub, log):
    sub = hub.subscribe("c1", None, None)
    hub.unsubscribe(sub.listener)
    hub.unsubscribe(sub.listener)  # twice is harmless
    assert hub.stats() == {
        "streams": 0,
        "listeners": 0,
        "readerAlive": True,
        "reads": hub.reads,
        "draining": False,
    }
    assert log.listening == set()  # no notifications asked for a stream nobody watches


# -- refusing new streams --------------------------------------------------------------


def test_too_many_streams_per_connection(make_hub, log):
    hub = make_hub(max_streams_per_connection=2)
    hub.subscribe("c1", None, None)
    hub.subscribe("c1", None, None)
    with pytest.raises(TooManyStreams) as info:
        hub.subscribe("c1", None, None)
    assert isinstance(info.value, TooMany) and isinstance(info.value, SluiceError)
    assert info.value.retry_after == 5
    assert status_of(info.value) == 429
    hub.subscribe("c2", None, None)  # another connection is not affected
    assert hub.stats()["listeners"] == 3


def test_draining_closes_streams_and_refuses_new_ones(hub, log):
    subs = [hub.subscribe(c, None, None) for c in ("c1", "c1", "c2")]
    assert hub.drain() == 3
    assert all(s.listener.closed and s.listener.close_reason == "shutdown" for s in subs)
    assert all(s.listener.wake.is_set() for s in subs)
    with pytest.raises(Draining) as info:
        hub.subscribe("c3", None, None)
    assert isinstance(info.value, Unavailable)
    assert info.value.retry_after == 1
    assert status_of(info.value) == 503
    assert hub.stats()["draining"] is True


# -- heartbeats ---------------------------------------------------------------------------


def test_beat_goes_only_to_quiet_attached_listeners(hub, log, pairs, clock):
    now = clock()
    quiet, quiet_client = live(hub, log, pairs)
    recent, recent_client = live(hub, log, pairs)
    pending, pending_client = live(hub, log, pairs)
    writing, writing_client = live(hub, log, pairs)
    plain, plain_client = live(hub, log, pairs)  # HTTP/1.0: no chunk framing
    detached = hub.subscribe("c1", None, None)
    for sub in (quiet, pending, writing, plain, detached):
        sub.listener.last_write = now - 10  # quiet for 10 s
    recent.listener.last_write = now - 4  # quiet for 4 s
    pending.listener.pending.append(b"x")
    writing.listener.writing = True
    plain.listener.chunked = False

    assert hub.beat(5.0) == 2

    frame = plain_client.recv(4096)
    assert HEARTBEAT.fullmatch(frame)
    assert quiet_client.recv(4096) == http_chunk(frame)  # the same bytes, chunk-framed
    for client in (recent_client, pending_client, writing_client):
        assert nothing_waiting(client)
    assert quiet.listener.last_write >= now  # the send counts as a write

    # Two seconds later the one that was recent is quiet too; the others just got a beat.
    clock.advance(2)
    assert hub.beat(5.0) == 1
    assert HEARTBEAT.fullmatch(unchunk(recent_client.recv(4096)))
    assert nothing_waiting(quiet_client) and nothing_waiting(plain_client)


def unchunk(data: bytes) -> bytes:
    match = re.fullmatch(rb"([0-9A-F]+)\r\n(.*)\r\n", data, re.S)
    assert match and int(match[1], 16) == len(match[2])
    return match[2]


def test_a_failed_heartbeat_ends_the_stream(hub, log, pairs, clock):
    sub, client = live(hub, log, pairs)
    sub.listener.last_write = clock() - 60
    client.close()  # the client is gone: the send fails (EPIPE)
    hub.beat(5.0)
    assert sub.listener.closed and sub.listener.close_reason == "gone"
    assert sub.listener.raw is None


# -- a client that does not read -----------------------------------------------------------------


def test_a_blocked_writer_is_cut_off_past_its_limit(make_hub, log, pairs):
    hub = make_hub(listener_buffer_bytes=1024)
    key = log.stream_key("c1")
    sub, client = live(hub, log, pairs)
    listener = sub.listener
    listener.writing = True  # its response's write is blocked (as SocketSink sets it)
    small = log.append(key, JOB, b'{"pad":"' + b"x" * 100 + b'"}')
    with gevent.Timeout(2):
        listener.wake.wait()
    # Below the limit: queued for its response, not cut off.
    assert listener.take() == frame_of(log, key, small) and not listener.closed
    listener.wake.clear()
    log.append(key, JOB, b'{"pad":"' + b"x" * 600 + b'"}')
    log.append(key, JOB, b'{"pad":"' + b"y" * 600 + b'"}')
    with gevent.Timeout(2):
        listener.wake.wait()
    assert listener.closed and listener.close_reason == "overflow"
    assert listener.pending == [] and listener.pending_bytes == 0
    assert recv_eof(client) == b""  # its socket was shut down


def test_a_listener_catching_up_is_not_cut_off(make_hub, log):
    hub = make_hub(listener_buffer_bytes=1024)
    key = log.stream_key("c1")
    sub = hub.subscribe("c1", None, None)  # not writing: its response is busy elsewhere
    log.append(key, JOB, b'{"pad":"' + b"x" * 2000 + b'"}')
    with gevent.Timeout(2):
        sub.listener.wake.wait()
    assert not sub.listener.closed
    assert sub.listener.pending_bytes > 1024


# -- notifications: the work per event, and what if one is lost -------------------------------


class CountingLog(MemoryLog):
    """Records which streams each read named."""

    def __init__(self) -> None:
        super().__init__()
        self.read_keys: list[set[bytes]] = []

    def read(self, cursors, count):
        self.read_keys.append(set(cursors))
        return super().read(cursors, count)


def test_an_event_reads_only_the_stream_it_was_appended_to(make_hub, pairs):
    """Per-event work does not grow with the watched streams: 200 are watched, an
    event on one is one read naming that one stream."""
    log = CountingLog()
    hub = Hub(load_settings(environ={}, overrides={"read_block_ms": 60_000}), log)
    try:
        subs = {f"c{i}": live(hub, log, pairs, connection=f"c{i}") for i in range(200)}
        gevent.sleep(0.05)  # the confirmations' reads
        log.read_keys.clear()
        key = log.stream_key("c7")
        entry = log.append(key, JOB, b'{"n":1}')
        want = http_chunk(frame_of(log, key, entry))
        assert recv_exactly(subs["c7"][1], len(want)) == want
        assert log.read_keys == [{key}]
    finally:
        gevent.killall([g for g in (hub._reader, hub._listener, hub._ticker) if g])


def test_a_lost_notification_delays_an_event_until_the_sweep_never_loses_it(make_hub, log, pairs):
    hub = make_hub(read_block_ms=200)
    sub, client = live(hub, log, pairs)
    gevent.sleep(0.05)
    key = log.stream_key("c1")
    log.silent = True  # the notifications of these appends are lost
    ids = [log.append(key, JOB, b'{"n":%d}' % i) for i in range(3)]
    want = http_chunk(b"".join(frame_of(log, key, i) for i in ids))
    assert recv_exactly(client, len(want), timeout=2) == want  # in order, once


class FlakyLog(MemoryLog):
    """Loses its subscription once: the next call subscribes again and confirms
    every listened stream, as the store does after a reconnect."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = Event()

    def notifications(self, timeout: float) -> list[bytes]:
        if self.fail.is_set():
            self.fail.clear()
            self.silent = False
            self._notified = list(self.listening)  # re-subscribed: all confirmed
            raise StoreUnavailable("ConnectionError: connection lost")
        return super().notifications(timeout)


def test_after_a_lost_subscription_every_watched_stream_is_read_again(pairs):
    log = FlakyLog()
    hub = Hub(load_settings(environ={}, overrides={"read_block_ms": 60_000}), log)
    try:
        sub_a, client_a = live(hub, log, pairs, connection="a")
        sub_b, client_b = live(hub, log, pairs, connection="b")
        gevent.sleep(0.05)
        # While the subscription is down, appends notify nobody.
        log.silent = True
        a = log.append(log.stream_key("a"), JOB, b'{"a":1}')
        b = log.append(log.stream_key("b"), JOB, b'{"b":1}')
        log.fail.set()
        log._arrived.set()  # the subscriber notices the loss
        want_a = http_chunk(frame_of(log, log.stream_key("a"), a))
        want_b = http_chunk(frame_of(log, log.stream_key("b"), b))
        assert recv_exactly(client_a, len(want_a), timeout=2) == want_a
        assert recv_exactly(client_b, len(want_b), timeout=2) == want_b
    finally:
        gevent.killall([g for g in (hub._reader, hub._listener, hub._ticker) if g])


def test_a_stream_nobody_watches_is_no_longer_listened_to(hub, log, pairs):
    sub, _client = live(hub, log, pairs)
    assert log.listening == {log.stream_key("c1")}
    hub.unsubscribe(sub.listener)
    assert log.listening == set()
