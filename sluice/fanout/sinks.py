"""Where a stream's bytes go: the one interface for writing a stream, and its
two implementations.

- `SocketSink` (gunicorn, no TLS): the frames go straight to the client's OS
  socket, framed exactly as gunicorn would frame a yielded chunk. Once the
  response is live it *attaches* the socket to its listener, and from then on
  the hub's reader writes each batch to it with one non-blocking send.
- `YieldSink` (any other server, TLS): each write is yielded to the server.

Both are used the same way by `response.stream_body`: ``yield from
sink.write(body)``. A `SocketSink` returns nothing to yield; a `YieldSink`
yields the body once. Why write to the socket at all: going through gunicorn
costs, per chunk and per listener, werkzeug's iterator wrapper, gunicorn's
write path, gevent's ``sendall`` (an extra ``getsockopt`` syscall and a
timeout object) and two copies.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from .listener import Listener
from .sockets import direct_socket, os_socket

NOTHING: tuple[bytes, ...] = ()


class Sink(Protocol):
    """How a response writes its stream."""

    #: Whether the hub's ticker sends this stream's heartbeats (else the response does).
    ticker_beats: bool

    def write(self, body: bytes) -> Iterable[bytes]:
        """Write SSE frames; returns what the response must yield to the server."""
        ...

    def finish_partial(self) -> Iterable[bytes]:
        """Write what a direct send left over (`listener.partial`)."""
        ...

    def attach(self) -> None:
        """Let the hub's reader write to this client directly from now on."""
        ...


class SocketSink:
    """Writes to the client's socket: one non-blocking ``send`` of the framed
    bytes; only when the kernel buffer is full does the greenlet fall back to a
    cooperative ``sendall`` (with ``listener.writing`` set, so a stalled client
    can be cut off). The response's first bytes still go through gunicorn,
    which sends the headers, and gunicorn writes the final empty chunk."""

    __slots__ = ("sock", "raw", "listener", "ticker_beats")

    def __init__(self, listener: Listener, sock: socket.socket, chunked: bool) -> None:
        self.listener = listener
        self.sock = sock
        self.raw = os_socket(sock)
        self.ticker_beats = False
        listener.chunked = chunked

    def write(self, body: bytes) -> Iterable[bytes]:
        data = self.listener.framed(body)
        try:
            sent = self.raw.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self._send_all(memoryview(data)[sent:])
        self.listener.last_write = self.listener.clock()
        return NOTHING

    def finish_partial(self) -> Iterable[bytes]:
        listener = self.listener
        partial, listener.partial = listener.partial, None
        if partial is not None:
            self._send_all(partial)
        return NOTHING

    def _send_all(self, data: bytes | memoryview) -> None:
        """Already framed bytes, waiting cooperatively while the kernel is full."""
        listener = self.listener
        listener.writing = True
        try:
            self.sock.sendall(data)
        finally:
            listener.writing = False
        listener.last_write = listener.clock()

    def attach(self) -> None:
        if self.listener.raw is None:
            self.listener.raw = self.raw
            self.ticker_beats = True


class YieldSink:
    """Yields each write to the server, which frames and sends it."""

    __slots__ = ("listener", "ticker_beats")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.ticker_beats = False

    def write(self, body: bytes) -> Iterator[bytes]:
        listener = self.listener
        listener.writing = True
        yield body
        listener.writing = False
        listener.last_write = listener.clock()

    def finish_partial(self) -> Iterable[bytes]:
        # Never attached, so the reader never writes directly and leaves nothing.
        self.listener.partial = None
        return NOTHING

    def attach(self) -> None:
        pass


def sink_for(listener: Listener, environ: dict[str, Any]) -> Sink:
    """A `SocketSink` when the server lets the stream write to the socket, else a
    `YieldSink`."""
    direct = direct_socket(environ)
    if direct is None:
        return YieldSink(listener)
    return SocketSink(listener, *direct)
