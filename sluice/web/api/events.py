"""`GET /api/events/stream`: the view that opens a stream.

Everything that can fail (parameters, authentication, ownership, Redis) is
checked here, before the first byte, so errors are JSON with the right
status. The response body (`sluice.fanout.response.stream_body`) then touches
neither the request nor the session: it moves bytes from its listener to the
socket through its sink.
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask_login import current_user

from ...errors import NotFound, Unauthorized
from ...fanout.response import stream_body
from ...fanout.sinks import sink_for
from ...fanout.sockets import client_socket
from ...schema import parse_event_id, parse_types, parse_uuid
from ...store import connections
from ..extensions import state
from .auth import connection_for_request_key

bp = Blueprint("events", __name__, url_prefix="/api/events")

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    # Fly's proxy (and others) must neither compress nor transform the stream.
    "Content-Encoding": "identity",
}


@bp.get("/stream")
def stream() -> Response:
    # At most `stream_open_concurrency` opens do their Redis work at once (see Hub).
    with state().hub.opening:
        return _open_stream()


def _open_stream() -> Response:
    # 401 for a bad key comes before any 400.
    key_connection = connection_for_request_key()
    if key_connection is None and not current_user.is_authenticated:
        raise Unauthorized("Sign in or send 'Authorization: Bearer sk_live_…'")
    connection_id = parse_uuid(request.args.get("connectionId"), "connectionId")
    types = parse_types(request.args.get("types"))
    header_id = request.headers.get("Last-Event-ID")
    if header_id is not None and header_id.strip():
        last_event_id = parse_event_id(header_id, "Last-Event-ID")
    else:
        last_event_id = parse_event_id(request.args.get("lastEventId"), "lastEventId")

    app_state = state()
    r = app_state.redis
    if key_connection is not None:
        if key_connection != connection_id or not connections.connection_exists(r, connection_id):
            raise NotFound("Connection not found")
    else:
        connections.owned_connection(r, current_user.id, connection_id)

    hub = app_state.hub
    subscription = hub.subscribe(
        connection_id, last_event_id, types, client_socket(request.environ)
    )
    settings = app_state.settings
    body = stream_body(
        hub,
        subscription,
        sink_for(subscription.listener, request.environ),
        heartbeat=settings.heartbeat_seconds,
        max_seconds=settings.stream_max_seconds,
        retry_ms=settings.retry_ms,
    )
    return Response(body, status=200, headers=STREAM_HEADERS, direct_passthrough=True)
