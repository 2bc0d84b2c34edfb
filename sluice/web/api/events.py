"""`GET /api/events/stream`: the view that opens a stream.

Everything that can fail (parameters, authentication, ownership, Redis) is
checked here, before the first byte, so errors are JSON with the right
status. The response body (`sluice.fanout.response.stream_body`) then touches
neither the request nor the session: it moves bytes from its listener to the
socket through its sink.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from ...fanout.response import stream_body
from ...fanout.sinks import sink_for
from ...fanout.sockets import client_socket
from ...schema import parse_event_id, parse_types, parse_uuid
from ..extensions import state
from .auth import check_reader, reader_credentials

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
    key_connection = reader_credentials()
    connection_id = parse_uuid(request.args.get("connectionId"), "connectionId")
    types = parse_types(request.args.get("types"))
    header_id = request.headers.get("Last-Event-ID")
    if header_id is not None and header_id.strip():
        last_event_id = parse_event_id(header_id, "Last-Event-ID")
    else:
        last_event_id = parse_event_id(request.args.get("lastEventId"), "lastEventId")

    check_reader(key_connection, connection_id)
    app_state = state()

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
