"""`GET /api/events/stream`: the blueprint and the per-response generator.

Everything that can fail (parameters, authentication, ownership, Redis) is
checked in the view, before the first byte, so errors are JSON with the right
status. The generator then touches neither the request nor the session: it
only moves bytes from its listener to the socket.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, request
from flask_login import current_user

from ..auth import bearer_token, connection_for_api_key
from ..connections import connection_exists, owned_connection
from ..errors import ApiError
from ..extensions import state
from ..validation import parse_uuid
from .hub import Draining, Hub, Listener, Subscription, TooManyStreams, reset_frame
from .sse import cached_heartbeat, retry_frame

bp = Blueprint("events", __name__, url_prefix="/api/events")

#: `types` categories and the event names each stands for.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "job": ("job:state_change",),
    "worker": ("worker:heartbeat", "worker:state_change"),
    "queue": ("queue:snapshot",),
}
EVENT_NAMES = frozenset(name for names in CATEGORIES.values() for name in names)
ALWAYS_SENT = frozenset({"heartbeat", "stream:reset"})
MAX_TYPES_LENGTH = 512
EVENT_ID_RE = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$", re.ASCII)
#: Each part of a Redis Stream id is an unsigned 64-bit integer.
MAX_ID_PART = 2**64 - 1

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    # Fly's proxy (and others) must neither compress nor transform the stream.
    "Content-Encoding": "identity",
}


def parse_types(raw: str | None) -> frozenset[bytes] | None:
    """The event names a `types` parameter selects; None means all."""
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_TYPES_LENGTH:
        raise ApiError(
            400, "types is too long", {"types": f"at most {MAX_TYPES_LENGTH} characters"}
        )
    selected: set[str] = set()
    unknown: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item in CATEGORIES:
            selected.update(CATEGORIES[item])
        elif item in EVENT_NAMES:
            selected.add(item)
        elif item not in ALWAYS_SENT:
            unknown.append(item)
    if unknown:
        raise ApiError(
            400,
            "Unknown event type: " + ", ".join(unknown[:10]),
            {"types": "each item is one of " + ", ".join([*CATEGORIES, *sorted(EVENT_NAMES)])},
        )
    if not selected:
        return None if not raw.strip(" ,") else frozenset()
    return frozenset(name.encode() for name in selected)


def parse_last_event_id(raw: str | None, field: str) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    match = EVENT_ID_RE.match(raw.strip())
    if match is None:
        raise ApiError(400, "Malformed event id", {field: "a stream id like 1772187000000-0"})
    ms, seq = int(match.group(1)), int(match.group(2) or 0)
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ApiError(400, "Event id out of range", {field: "each part is at most 2^64-1"})
    return f"{ms}-{seq}"


def _authorize(connection_id: str, api_key: str | None) -> None:
    r = state().redis
    if api_key is not None:
        if connection_for_api_key(r, api_key) != connection_id or not connection_exists(
            r, connection_id
        ):
            raise ApiError(404, "Connection not found")
    else:
        owned_connection(r, current_user.id, connection_id)


@bp.get("/stream")
def stream() -> Response:
    # At most `stream_open_concurrency` opens do their Redis work at once (see Hub).
    with state().hub.opening:
        return _open_stream()


def _open_stream() -> Response:
    api_key = bearer_token()
    if api_key is None and not current_user.is_authenticated:
        raise ApiError(401, "Sign in or send 'Authorization: Bearer sk_live_…'")
    if api_key is not None:
        connection_for_api_key(state().redis, api_key)  # 401 for a bad key, before 400s
    connection_id = parse_uuid(request.args.get("connectionId"), "connectionId")
    types = parse_types(request.args.get("types"))
    header_id = request.headers.get("Last-Event-ID")
    if header_id is not None and header_id.strip():
        last_event_id = parse_last_event_id(header_id, "Last-Event-ID")
    else:
        last_event_id = parse_last_event_id(request.args.get("lastEventId"), "lastEventId")
    _authorize(connection_id, api_key)

    app_state = state()
    hub = app_state.hub
    try:
        subscription = hub.subscribe(
            connection_id, last_event_id, types, request.environ.get("gunicorn.socket")
        )
    except Draining:
        raise ApiError(503, "Server is restarting; retry", headers={"Retry-After": "1"}) from None
    except TooManyStreams:
        raise ApiError(
            429, "Too many open streams for this connection", headers={"Retry-After": "5"}
        ) from None
    settings = app_state.settings
    body = stream_body(
        hub,
        subscription,
        heartbeat=settings.heartbeat_seconds,
        max_seconds=settings.stream_max_seconds,
        retry_ms=settings.retry_ms,
        direct=direct_socket(request.environ),
    )
    return Response(body, status=200, headers=STREAM_HEADERS, direct_passthrough=True)


def direct_socket(environ: dict) -> tuple[socket.socket, bool] | None:
    """The client's plain socket and whether gunicorn frames the body as chunked,
    when the stream may write to it itself (gunicorn, no TLS); else None."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn"):
        return None
    if getattr(sock, "_sslobj", None) is not None or not hasattr(sock, "_sock"):
        return None
    # gunicorn chunks every HTTP/1.1 response without a Content-Length.
    return sock, environ.get("SERVER_PROTOCOL") != "HTTP/1.0"


class SocketWriter:
    """Writes the stream straight to the client's socket, framed exactly as
    gunicorn would frame a yielded chunk: hex size, CRLF, data, CRLF.

    Why: going through gunicorn costs, per chunk and per listener, werkzeug's
    iterator wrapper, gunicorn's write path, gevent's ``sendall`` (an extra
    ``getsockopt`` syscall and a timeout object) and two copies. Here a chunk
    is one non-blocking ``send`` of the pending frames; only when the
    kernel buffer is full does the greenlet fall back to a cooperative
    ``sendall`` (with ``listener.writing`` set, so a stalled client can be cut
    off). The response's first bytes still go through gunicorn, which sends
    the headers, and gunicorn writes the final empty chunk at the end.
    """

    __slots__ = ("sock", "raw", "listener")

    def __init__(self, listener: Listener, sock: socket.socket, chunked: bool) -> None:
        self.listener = listener
        self.sock = sock
        self.raw = sock._sock  # the OS socket, non-blocking under gevent
        listener.chunked = chunked

    def write_pending(self) -> None:
        listener = self.listener
        parts = listener.pending
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        listener.pending_bytes = 0
        self.write(body)

    def write(self, body: bytes) -> None:
        data = self.listener.framed(body)
        try:
            sent = self.raw.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.write_framed(memoryview(data)[sent:])
        self.listener.last_write = time.monotonic()

    def write_framed(self, data: bytes | memoryview) -> None:
        """Already framed bytes, waiting cooperatively while the kernel is full."""
        listener = self.listener
        listener.writing = True
        try:
            self.sock.sendall(data)
        finally:
            listener.writing = False
        listener.last_write = time.monotonic()

    def attach(self) -> None:
        """Let the fan-out write to this client directly from now on (see
        `Listener.deliver`); only called with nothing pending."""
        self.listener.raw = self.raw


def stream_body(
    hub: Hub,
    subscription: Subscription,
    *,
    heartbeat: float,
    max_seconds: float,
    retry_ms: int,
    direct: tuple[socket.socket, bool] | None = None,
) -> Iterator[bytes]:
    """The response: first bytes at once, history, then live frames and heartbeats.

    Runs without a request context. A client that left is noticed when a write
    fails (at the latest at the next heartbeat); `finally` then releases the
    listener. gunicorn closes the iterator (GeneratorExit) or kills the
    greenlet (GreenletExit); both run `finally`. With `direct` (see
    `direct_socket`), everything after the first bytes is written by
    `SocketWriter`; otherwise each chunk is yielded to the server.
    """
    listener = subscription.listener
    wake = listener.wake
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    try:
        yield retry_frame(retry_ms)
        listener.last_write = time.monotonic()
        writer = SocketWriter(listener, *direct) if direct is not None else None
        if subscription.reset_reason is not None:
            frame = reset_frame(subscription.reset_reason)
            if writer is None:
                yield frame
            else:
                writer.write(frame)
        if subscription.catchup_from is not None:
            for frames in hub.history(listener, subscription.catchup_from, subscription.catchup_to):
                if frames:
                    if writer is None:
                        listener.writing = True
                        yield b"".join(frames)
                        listener.writing = False
                    else:
                        writer.write(b"".join(frames))
        while True:
            if listener.partial is not None:  # left over by a direct write
                partial, listener.partial = listener.partial, None
                writer.write_framed(partial)
                continue
            if listener.pending:
                if writer is None:
                    listener.writing = True
                    yield listener.take()
                    listener.writing = False
                    listener.last_write = time.monotonic()
                else:
                    writer.write_pending()
                continue
            if listener.closed:
                break
            if writer is not None and listener.raw is None:
                writer.attach()
            wake.clear()
            if listener.raw is not None:
                # Attached: the hub's ticker sends the heartbeats (see
                # Hub._heartbeat_forever); wake only for work or the deadline.
                if deadline is None:
                    wake.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0 and wake.wait(left):
                    continue
                if time.monotonic() >= deadline:
                    break
                continue
            # Heartbeat only after `heartbeat` seconds without any write.
            timeout = heartbeat - (time.monotonic() - listener.last_write)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout = min(timeout, left)
            if timeout > 0 and wake.wait(timeout):
                continue
            if deadline is not None and time.monotonic() >= deadline:
                break
            if time.monotonic() - listener.last_write >= heartbeat:
                if writer is None:
                    yield cached_heartbeat()
                    listener.last_write = time.monotonic()
                else:
                    writer.write(cached_heartbeat())
        # The server ends this stream (shutdown, lifetime cap, deleted connection):
        # close the connection too, so the client reconnects at once.
        listener.hang_up()
    except redis.RedisError:
        # History could not be read: end the response; the client resumes.
        listener.hang_up()
    finally:
        hub.unsubscribe(listener)
