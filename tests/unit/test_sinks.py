"""The two ways a stream is written: to the client's socket, or yielded to the server."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from sluice.fanout.listener import Listener
from sluice.fanout.sinks import SocketSink, YieldSink, sink_for
from sluice.fanout.sse import http_chunk
from tests.unit.wire import recv_exactly

BODY = b"id: 1-0\nevent: job:state_change\ndata: {}\n\n"


def listener() -> Listener:
    return Listener(b"k", None, 1 << 20)


@pytest.mark.parametrize("chunked, wire", [(True, http_chunk(BODY)), (False, BODY)])
def test_socket_sink_writes_the_framed_body(pair, chunked, wire):
    server, client = pair
    lst = listener()
    lst.last_write = 0.0
    sink = SocketSink(lst, server, chunked)
    assert lst.chunked is chunked
    assert tuple(sink.write(BODY)) == ()  # nothing for the server to yield
    assert recv_exactly(client, len(wire)) == wire
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)
    assert lst.last_write > 0.0


def test_socket_sink_waits_cooperatively_when_the_kernel_buffer_is_full(pair):
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw = server._sock
    filler = b""
    while True:  # fill the kernel buffer with a non-blocking send
        try:
            sent = raw.send(b"f" * 4096)
        except BlockingIOError:
            break
        filler += b"f" * sent
    lst = listener()
    sink = SocketSink(lst, server, chunked=True)
    body = b"x" * 100_000
    writer = gevent.spawn(lambda: tuple(sink.write(body)))
    gevent.idle()  # the writer runs until it blocks
    assert not writer.dead
    assert lst.writing  # meanwhile, a stalled client could be cut off
    before = time.monotonic()
    wire = filler + http_chunk(body)
    reader = gevent.spawn(recv_exactly, client, len(wire))
    assert reader.get(timeout=5) == wire
    assert writer.get(timeout=5) == ()
    assert not lst.writing
    assert lst.last_write >= before


def test_socket_sink_finishes_a_partial_direct_send(pair):
    server, client = pair
    lst = listener()
    sink = SocketSink(lst, server, chunked=True)
    lst.partial = b"rest of a chunk\r\n"
    assert tuple(sink.finish_partial()) == ()
    assert lst.partial is None
    assert recv_exactly(client, 17) == b"rest of a chunk\r\n"
    assert tuple(sink.finish_partial()) == ()  # nothing left: nothing sent


def test_socket_sink_attach_hands_the_os_socket_to_the_listener(pair):
    server, _ = pair
    lst = listener()
    sink = SocketSink(lst, server, chunked=True)
    assert lst.raw is None and sink.ticker_beats is False
    sink.attach()
    assert lst.raw is server._sock
    assert sink.ticker_beats is True  # from now on the hub's ticker beats for it
    other = object()
    lst.raw = other
    sink.attach()  # already attached: unchanged
    assert lst.raw is other


def test_yield_sink_yields_the_body_once():
    lst = listener()
    lst.last_write = 0.0
    sink = YieldSink(lst)
    out = sink.write(BODY)
    assert next(out) == BODY
    assert lst.writing  # while the server writes it
    with pytest.raises(StopIteration):
        next(out)
    assert not lst.writing
    assert lst.last_write > 0.0
    assert list(sink.write(b"abc")) == [b"abc"]
    assert tuple(sink.finish_partial()) == ()
    sink.attach()
    assert lst.raw is None and sink.ticker_beats is False


def test_sink_for_picks_the_socket_under_gunicorn(pair):
    server, _ = pair
    environ = {
        "gunicorn.socket": server,
        "SERVER_SOFTWARE": "gunicorn/23.0.0",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    lst = listener()
    sink = sink_for(lst, environ)
    assert isinstance(sink, SocketSink) and sink.raw is server._sock and lst.chunked
    lst = listener()
    sink = sink_for(lst, {**environ, "SERVER_PROTOCOL": "HTTP/1.0"})
    assert isinstance(sink, SocketSink) and lst.chunked is False


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"SERVER_SOFTWARE": "Werkzeug/3.1"},
        {"SERVER_SOFTWARE": "gunicorn/23.0.0"},  # no socket
    ],
)
def test_sink_for_yields_elsewhere(environ):
    assert isinstance(sink_for(listener(), environ), YieldSink)


def test_a_client_stuck_on_a_yielded_heartbeat_is_cut_off_past_its_buffer():
    """Every yielded write (heartbeats too) marks the listener as writing, so frames
    piling up behind a client that stopped reading are bounded by its buffer."""
    from sluice.fanout.sse import heartbeat_frame

    lst = Listener(b"k", None, 100)
    write = YieldSink(lst).write(heartbeat_frame())
    next(write)  # the server is sending the heartbeat; the client does not read
    frame = (b"1-0", b"job:state_change", b"x" * 60)
    lst.deliver([frame])
    assert not lst.closed and lst.pending_bytes == 60
    lst.deliver([(b"2-0", frame[1], frame[2])])
    assert lst.closed and lst.close_reason == "overflow" and lst.pending_bytes == 0
