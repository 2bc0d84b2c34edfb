"""`GET /api/events/stream`: the blueprint and the per-response generator.

Everything that can fail (parameters, authentication, ownership, Redis) is
checked in the view, before the first byte, so errors are JSON with the right
status. The generator then touches neither the request nor the session: it
only moves bytes from its listener to the socket.
"""

from __future__ import annotations

import re
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
from .hub import Draining, Hub, Subscription, TooManyStreams, reset_frame
from .sse import heartbeat_frame, retry_frame

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
EVENT_ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")

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
    return f"{match.group(1)}-{match.group(2) or 0}"


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
    )
    return Response(body, status=200, headers=STREAM_HEADERS, direct_passthrough=True)


def stream_body(
    hub: Hub,
    subscription: Subscription,
    *,
    heartbeat: float,
    max_seconds: float,
    retry_ms: int,
) -> Iterator[bytes]:
    """The response: first bytes at once, history, then live frames and heartbeats.

    Runs without a request context. A client that left is noticed when a write
    fails (at the latest at the next heartbeat); `finally` then releases the
    listener. gunicorn closes the iterator (GeneratorExit) or kills the
    greenlet (GreenletExit); both run `finally`.
    """
    listener = subscription.listener
    wake = listener.wake
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    try:
        yield retry_frame(retry_ms)
        if subscription.reset_reason is not None:
            yield reset_frame(subscription.reset_reason)
        if subscription.catchup_from is not None:
            for frames in hub.history(listener, subscription.catchup_from, subscription.catchup_to):
                if frames:
                    listener.writing = True
                    yield b"".join(frames)
                    listener.writing = False
        while True:
            if listener.pending:
                listener.writing = True
                yield listener.take()
                listener.writing = False
                continue
            if listener.closed:
                break
            timeout = heartbeat
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout = min(timeout, left)
            wake.clear()
            if not wake.wait(timeout):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                yield heartbeat_frame()
        # The server ends this stream (shutdown, lifetime cap, deleted connection):
        # close the connection too, so the client reconnects at once.
        listener.hang_up()
    except redis.RedisError:
        # History could not be read: end the response; the client resumes.
        listener.hang_up()
    finally:
        hub.unsubscribe(listener)
