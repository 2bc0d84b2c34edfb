"""The stream response loop (`stream_body`), driven with a fake hub."""

from __future__ import annotations

import time

import gevent
from gevent.queue import Queue

from sluice import contract
from sluice.errors import StoreUnavailable
from sluice.fanout.hub import Subscription
from sluice.fanout.listener import Batch, Listener
from sluice.fanout.response import stream_body
from sluice.fanout.sinks import SocketSink, YieldSink
from sluice.fanout.sse import http_chunk, reset_frame, retry_frame
from tests.unit.wire import HEARTBEAT, frame, recv_exactly

END = object()


class FakeHub:
    def __init__(self, pages=(), error: Exception | None = None) -> None:
        self.pages = list(pages)
        self.error = error
        self.history_calls: list[tuple[bytes, bytes | None]] = []
        self.unsubscribed: list[Listener] = []

    def history(self, listener, after, until):
        self.history_calls.append((after, until))
        if self.error is not None:
            raise self.error
        yield from self.pages

    def unsubscribe(self, listener):
        self.unsubscribed.append(listener)


class Body:
    """Runs a response body in a greenlet; what it yields arrives in a queue."""

    def __init__(self, iterator) -> None:
        self.out: Queue = Queue()
        self.iterator = iterator
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            for chunk in self.iterator:
                self.out.put(chunk)
        finally:
            self.out.put(END)

    def next(self, timeout: float = 2.0):
        return self.out.get(timeout=timeout)

    def rest(self, timeout: float = 2.0) -> list:
        items = []
        while (item := self.next(timeout)) is not END:
            items.append(item)
        return items


def make(hub=None, reset=None, catchup=(None, None), **options):
    listener = Listener(b"k", None, 1 << 20)
    subscription = Subscription(listener, reset, *catchup)
    hub = hub or FakeHub()
    options = {"heartbeat": 60.0, "max_seconds": 0.0, "retry_ms": 2000, **options}
    return hub, listener, subscription, options


def test_first_bytes_reset_history_then_pending_then_live():
    pages = [[frame(2)[2], frame(3)[2]], [], [frame(4)[2]]]
    hub, listener, sub, options = make(
        FakeHub(pages), contract.RESET_HISTORY_TRIMMED, (b"1-0", b"4-0")
    )
    listener.pending.append(frame(5)[2])  # arrived while history was written
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.next() == retry_frame(2000) == b"retry: 2000\n\n"
    assert body.next() == reset_frame(contract.RESET_HISTORY_TRIMMED)
    assert body.next() == frame(2)[2] + frame(3)[2]  # one write per page
    assert body.next() == frame(4)[2]  # empty pages write nothing
    assert body.next() == frame(5)[2]
    assert hub.history_calls == [(b"1-0", b"4-0")]
    # Live: the hub delivers to a listener that is not attached: it queues and wakes.
    listener.deliver([frame(6), frame(7)])
    assert body.next() == frame(6)[2] + frame(7)[2]
    assert not hub.unsubscribed
    listener.close("shutdown")
    assert body.rest() == []
    assert hub.unsubscribed == [listener]


def test_no_reset_and_no_history_when_not_asked():
    hub, listener, sub, options = make()
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.next() == retry_frame(2000)
    listener.close("shutdown")
    assert body.rest() == []
    assert hub.history_calls == []


def test_pending_frames_are_written_before_a_close():
    hub, listener, sub, options = make()
    listener.pending.append(frame(1)[2])
    listener.close("connection_deleted")
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.rest() == [retry_frame(2000), frame(1)[2]]
    assert hub.unsubscribed == [listener]


def test_a_heartbeat_after_the_interval_with_nothing_to_send():
    hub, listener, sub, options = make(heartbeat=0.05)
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.next() == retry_frame(2000)
    started = time.monotonic()
    beat = body.next()
    assert HEARTBEAT.fullmatch(beat)
    assert time.monotonic() - started >= 0.04
    # Work resets the wait: the next bytes are the frame, then a heartbeat again.
    listener.deliver([frame(1)])
    assert body.next() == frame(1)[2]
    assert HEARTBEAT.fullmatch(body.next())
    listener.close("shutdown")
    assert body.rest() == []


def test_the_lifetime_cap_ends_the_stream():
    hub, listener, sub, options = make(heartbeat=60.0, max_seconds=0.05)
    started = time.monotonic()
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.rest() == [retry_frame(2000)]
    assert 0.04 <= time.monotonic() - started < 2
    assert hub.unsubscribed == [listener]
    assert not listener.closed  # the server ended it, not the hub


def test_an_injected_clock_past_the_deadline_ends_it_at_once():
    ticks = iter([0.0, 0.0, 0.0, 100.0])
    hub, listener, sub, options = make(heartbeat=60.0, max_seconds=10.0)
    listener.clock = lambda: next(ticks, 100.0)  # the hub's clock, which the listener carries
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.rest(timeout=1) == [retry_frame(2000)]
    assert hub.unsubscribed == [listener]


def test_a_store_error_in_history_ends_the_stream():
    hub, listener, sub, options = make(
        FakeHub(error=StoreUnavailable("ConnectionError: down")), catchup=(b"0-0", b"9-0")
    )
    body = Body(stream_body(hub, sub, YieldSink(listener), **options))
    assert body.rest() == [retry_frame(2000)]
    assert hub.unsubscribed == [listener]


def test_closing_the_iterator_unsubscribes():
    hub, listener, sub, options = make()
    iterator = stream_body(hub, sub, YieldSink(listener), **options)
    assert next(iterator) == retry_frame(2000)
    iterator.close()  # what gunicorn does when the client leaves
    assert hub.unsubscribed == [listener]


def test_through_a_socket_sink_history_goes_to_the_socket_then_the_reader_writes(pair):
    server, client = pair
    hub, listener, sub, options = make(FakeHub([[frame(1)[2]]]), catchup=(b"0-0", b"1-0"))
    listener.sock = server
    sink = SocketSink(listener, server, chunked=True)
    body = Body(stream_body(hub, sub, sink, **options))
    assert body.next() == retry_frame(2000)  # through the server (it sends the headers)
    want = http_chunk(frame(1)[2])
    assert recv_exactly(client, len(want)) == want
    gevent.idle()  # the loop attaches the socket and waits
    assert listener.raw is server._sock and sink.ticker_beats
    # The reader's direct send: the batch's shared, already chunked bytes.
    frames = [frame(2), frame(3)]
    listener.deliver(frames, Batch(frames))
    want = Batch(frames).framed
    assert recv_exactly(client, len(want)) == want
    # A direct send that the kernel did not take whole is finished by the response.
    listener.partial = b"\r\n"
    listener.wake.set()
    assert recv_exactly(client, 2) == b"\r\n"
    listener.close("shutdown")
    assert body.rest() == []  # nothing more through the server
    assert hub.unsubscribed == [listener]
    with gevent.Timeout(2):
        assert client.recv(10) == b""  # hung up: the client reconnects at once
