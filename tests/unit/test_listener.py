"""One client's place in the fan-out: deliver, send_now, take, skip, cut_off."""

from __future__ import annotations

import socket

import pytest

from sluice.fanout.listener import Batch, Listener, parse_id
from sluice.fanout.sse import http_chunk
from tests.unit.wire import QUEUE, frame


def available(sock) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


@pytest.mark.parametrize(
    "raw, pair_",
    [
        (b"5-3", (5, 3)),
        ("5", (5, 0)),
        ("10-0", (10, 0)),
        (b"18446744073709551615-1", (2**64 - 1, 1)),
    ],
)
def test_parse_id(raw, pair_):
    assert parse_id(raw) == pair_
    assert parse_id("10-0") > parse_id("9-99")


def test_a_detached_listener_queues_and_wakes():
    lst = Listener(b"k", None, 1 << 20)
    lst.deliver([frame(1), frame(2)])
    assert lst.wake.is_set()
    assert lst.pending_bytes == len(frame(1)[2]) + len(frame(2)[2])
    assert lst.take() == frame(1)[2] + frame(2)[2]
    assert lst.pending == [] and lst.pending_bytes == 0
    assert lst.take() == b""


def test_types_filter_what_is_queued():
    lst = Listener(b"k", frozenset({QUEUE}), 1 << 20)
    lst.deliver([frame(1), frame(2, QUEUE), frame(3)])
    assert lst.take() == frame(2, QUEUE)[2]
    lst.wake.clear()
    lst.deliver([frame(4)])
    assert not lst.wake.is_set() and lst.pending == []


def test_an_idle_attached_listener_gets_the_batch_bytes_directly(pair):
    server, client = pair
    lst = Listener(b"k", None, 1 << 20)
    lst.raw = server._sock
    frames = [frame(1), frame(2)]
    batch = Batch(frames)
    lst.deliver(frames, batch)
    assert available(client) == batch.framed == http_chunk(frame(1)[2] + frame(2)[2])
    assert not lst.wake.is_set() and lst.pending == []
    lst.chunked = False
    lst.deliver(frames, batch)
    assert available(client) == batch.joined


def test_a_filtered_attached_listener_gets_its_own_chunk(pair):
    server, client = pair
    lst = Listener(b"k", frozenset({QUEUE}), 1 << 20)
    lst.raw = server._sock
    frames = [frame(1), frame(2, QUEUE)]
    lst.deliver(frames, Batch(frames))
    assert available(client) == http_chunk(frame(2, QUEUE)[2])


def test_a_busy_listener_queues_even_when_attached(pair):
    server, client = pair
    lst = Listener(b"k", None, 1 << 20)
    lst.raw = server._sock
    lst.partial = b"left"
    lst.deliver([frame(1)], Batch([frame(1)]))
    assert available(client) == b""
    assert lst.take() == frame(1)[2]


def test_send_now_keeps_what_the_kernel_did_not_take(pair):
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    lst = Listener(b"k", None, 1 << 20)
    lst.raw = server._sock
    data = b"z" * 1_000_000
    lst.send_now(data)
    assert lst.partial is not None and 0 < len(lst.partial) < len(data)
    assert data.endswith(lst.partial)
    assert lst.wake.is_set()  # the response finishes it


def test_send_now_to_a_closed_client_closes_the_listener(pair):
    server, client = pair
    lst = Listener(b"k", None, 1 << 20)
    lst.raw = server._sock
    client.close()
    lst.send_now(b"x")
    assert lst.closed and lst.close_reason == "gone" and lst.raw is None
    lst.send_now(b"y")  # detached now: nothing happens


def test_skip_until_drops_what_the_client_has_seen():
    lst = Listener(b"k", None, 1 << 20)
    lst.skip_until = (2, 0)
    lst.deliver([frame(1), frame(2)])
    assert lst.pending == [] and lst.skip_until == (2, 0)  # still skipping
    lst.deliver([frame(2), frame(3), frame(4)])
    assert lst.take() == frame(3)[2] + frame(4)[2]
    assert lst.skip_until is None
    lst.deliver([frame(1)])  # after that, nothing is skipped
    assert lst.take() == frame(1)[2]


def test_a_writing_listener_over_its_limit_is_cut_off(pair):
    server, client = pair
    lst = Listener(b"k", None, 100, sock=server)
    lst.writing = True
    lst.deliver([frame(1)])
    assert not lst.closed and lst.pending_bytes < 100
    lst.deliver([frame(2), frame(3)])
    assert lst.closed and lst.close_reason == "overflow"
    assert lst.pending == [] and lst.pending_bytes == 0 and lst.partial is None
    assert client.recv(10) == b""  # its socket is shut down


def test_close_keeps_the_first_reason_and_ignores_later_frames():
    lst = Listener(b"k", None, 1 << 20)
    lst.close("connection_deleted")
    lst.close("shutdown")
    assert lst.close_reason == "connection_deleted" and lst.wake.is_set()
    lst.deliver([frame(1)])
    assert lst.pending == []
