"""The one JSON error format, and handlers that turn every failure into it.

Clients (and the browser's EventSource, before a stream starts) always get
``{"error": {"code", "message", "details"}}``; never HTML, never a redirect,
never a traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ..contract import ERROR_CODES
from ..errors import (
    STORE_RETRY_AFTER,
    STORE_UNAVAILABLE,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    SluiceError,
    StoreUnavailable,
    TooLarge,
    TooMany,
    TooSlow,
    Unauthorized,
    Unavailable,
)
from ..metrics import REDIS_ERRORS
from ..store.client import STORE_ERRORS, StoreFull

log = logging.getLogger("sluice")

#: Domain error -> HTTP status: the one place the domain meets HTTP.
STATUS: dict[type[SluiceError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    TooSlow: 408,
    Conflict: 409,
    TooLarge: 413,
    TooMany: 429,
    Unavailable: 503,
}


def status_of(exc: SluiceError) -> int:
    """The HTTP status of a domain error (its nearest mapped class; 500 if none)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The error wire format, byte for byte."""
    payload = {"error": {"code": code, "message": message, "details": details or {}}}
    # "replace": an error must never fail to encode (it may echo what the client sent).
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


def error_response(
    status: int,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = Response(
        error_body(ERROR_CODES.get(status, "INTERNAL_ERROR"), message, details),
        status=status,
        mimetype="application/json",
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _from_domain_error(exc: SluiceError) -> Response:
    if isinstance(exc, StoreUnavailable):
        REDIS_ERRORS.inc()
        log.error("redis unavailable: %s", exc.reason[:200])
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(status_of(exc), exc.message, exc.details, headers)


def _from_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if status == 429:
        retry_after = getattr(exc, "retry_after", None)
        limit = getattr(exc, "limit", None)
        if retry_after is None and limit is not None:
            retry_after = getattr(limit.limit, "get_expiry", lambda: 60)()
        headers["Retry-After"] = str(int(retry_after or 60))
        message = "Too many requests; retry later"
    elif status == 413:
        message = "Request body is too large"
    elif status == 405:
        message = "Method not allowed"
        allowed = exc.get_headers()
        headers.update({k: v for k, v in allowed if k.lower() == "allow"})
    elif status == 404:
        message = "Not found"
    elif status >= 500:
        message = "Internal server error"
    else:
        message = exc.description or exc.name
    return error_response(status, message, headers=headers)


def _from_store_error(exc: Exception) -> Response:
    """Any Redis failure is the store being unavailable (503 + Retry-After), never a
    500: unreachable, timed out, read-only replica, out of memory (`maxmemory` with
    `noeviction`), a busy script, or a cluster failing over. Ingest is one Lua
    script, so a refused batch leaves nothing half-written (connection changes:
    see `store.client.transaction`)."""
    REDIS_ERRORS.inc()
    text = str(exc)
    if isinstance(exc, StoreFull):
        log.error("redis is out of memory (maxmemory reached): %s", text[:200])
        message = "The event store is full; retry later"
    else:
        log.error("redis unavailable: %s: %s", type(exc).__name__, text[:200])
        message = STORE_UNAVAILABLE
    return error_response(503, message, headers={"Retry-After": str(STORE_RETRY_AFTER)})


def _from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "Internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(SluiceError, _from_domain_error)
    app.register_error_handler(HTTPException, _from_http_exception)
    for store_error in STORE_ERRORS:
        app.register_error_handler(store_error, _from_store_error)
    app.register_error_handler(Exception, _from_unexpected)
