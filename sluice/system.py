"""Health and client configuration endpoints (cheap; never touch the stream)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .errors import ApiError
from .extensions import state

bp = Blueprint("system", __name__, url_prefix="/api")


@bp.get("/health")
def health() -> Response:
    """For load balancers and Fly's checks: is Redis reachable, is this process draining."""
    app_state = state()
    try:
        app_state.redis.ping()
    except Exception:
        raise ApiError(503, "Redis is unreachable") from None
    if app_state.hub.draining:
        raise ApiError(503, "Shutting down")
    return jsonify({"status": "ok", "hub": app_state.hub.stats()})


@bp.get("/debug/stats")
def debug_stats() -> Response:
    """Per-process counters for tests and operators (off unless SLUICE_DEBUG_STATS=1)."""
    app_state = state()
    if not app_state.settings.debug_stats:
        raise ApiError(404, "Not found")
    import gc
    import os

    from greenlet import greenlet

    live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
    return jsonify({"pid": os.getpid(), "greenlets": live, "hub": app_state.hub.stats()})


@bp.get("/config")
def client_config() -> Response:
    """Settings a dashboard needs to interpret the stream (e.g. when to call it stale)."""
    return jsonify({"heartbeatSeconds": state().settings.heartbeat_seconds})
