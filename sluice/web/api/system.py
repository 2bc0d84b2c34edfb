"""Health and client configuration endpoints (cheap; never touch the stream)."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, current_app, jsonify

from ...errors import STORE_RETRY_AFTER, NotFound, Unavailable
from ...store.client import StoreUnreachable
from ...store.health import durability_warnings
from ..extensions import state

bp = Blueprint("system", __name__, url_prefix="/api")
log = logging.getLogger("sluice.system")

#: How old the Redis warnings in /api/health may get before they are checked again.
REDIS_WARNINGS_MAX_AGE = 60.0


@bp.get("/health")
def health() -> Response:
    """For load balancers and Fly's checks: is Redis reachable, is this process draining.

    `warnings` (production only) says when Redis would lose or evict what Sluice
    keeps in it; it is checked at start and at most once a minute after that.
    """
    app_state = state()
    try:
        app_state.redis.ping()
    except Exception:
        raise Unavailable("Redis is unreachable", retry_after=STORE_RETRY_AFTER) from None
    if app_state.hub.draining:
        raise Unavailable("Shutting down", retry_after=1)
    return jsonify(
        {
            "status": "ok",
            "warnings": redis_warnings(current_app),
            "hub": app_state.hub.stats(),
        }
    )


def redis_warnings(app: Flask, max_age: float = REDIS_WARNINGS_MAX_AGE) -> list[str]:
    """The app's Redis warnings (production only), re-checked when older than `max_age`.

    New warnings are logged, so that calling this at start (wsgi.py does) puts
    them in the log once per process.
    """
    app_state = app.extensions["sluice"]
    cached = app.extensions.setdefault("sluice.redis_warnings", {"at": None, "warnings": []})
    if not app_state.settings.is_production:
        return []
    now = time.monotonic()
    if cached["at"] is not None and now - cached["at"] < max_age:
        return cached["warnings"]
    try:
        warnings = durability_warnings(app_state.redis)
    except StoreUnreachable:
        return cached["warnings"]  # unknown for now; asked again on the next call
    for warning in warnings:
        if warning not in cached["warnings"]:
            log.warning("%s", warning)
    cached.update(at=now, warnings=warnings)
    return warnings


@bp.get("/debug/stats")
def debug_stats() -> Response:
    """Per-process counters for tests and operators (off unless SLUICE_DEBUG_STATS=1)."""
    app_state = state()
    if not app_state.settings.debug_stats:
        raise NotFound("Not found")
    import gc
    import os

    from greenlet import greenlet

    live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
    return jsonify({"pid": os.getpid(), "greenlets": live, "hub": app_state.hub.stats()})


@bp.get("/config")
def client_config() -> Response:
    """Settings a dashboard needs to interpret the stream (e.g. when to call it
    stale) and its workers (when one whose heartbeats stopped is offline), and
    whether the instance is read-only (`SLUICE_READ_ONLY=1`: no action buttons)."""
    settings = state().settings
    return jsonify(
        {
            "heartbeatSeconds": settings.heartbeat_seconds,
            "workerExpirySeconds": settings.worker_expiry_seconds,
            "readOnly": settings.read_only,
        }
    )
