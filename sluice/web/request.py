"""Request-body parsing shared by the JSON endpoints."""

from __future__ import annotations

from typing import Any

import gevent
from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import strictjson
from ..errors import Invalid, SluiceError, TooLarge, TooSlow


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 that says what is wrong.

    The only way a JSON body is read: through `strictjson.parse` (UTF-8,
    no NaN/Infinity, no lone surrogates, bounded depth and numbers).
    """
    body = request.environ.get(_PARSED)
    if isinstance(body, SluiceError):  # read before (a rate-limit key) and refused
        raise body
    if body is None:
        try:
            raw = _read_body()
            if not raw:
                raise Invalid("Request body must be a JSON object", {"body": "empty"})
            try:
                body = strictjson.parse(raw)
            except strictjson.JsonError as exc:
                raise Invalid("Request body is not valid JSON", {"body": exc.reason}) from None
        except SluiceError as exc:
            request.environ[_PARSED] = exc
            raise
        request.environ[_PARSED] = body
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object", {"body": "not an object"})
    return body


_PARSED = "sluice.json_body"


def _read_body() -> bytes:
    """The raw body, read within `body_read_seconds` in all (a client that sends
    it byte by byte must not hold a connection, and a descriptor, for long)."""
    seconds = current_app.extensions["sluice"].settings.body_read_seconds
    try:
        with gevent.Timeout(seconds):
            return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise TooLarge("Request body is too large") from None
    except gevent.Timeout:
        raise TooSlow(f"The request body did not arrive within {seconds:g} s") from None


def json_field(name: str) -> Any:
    """One top-level field of the JSON body, or None when the body is not a valid
    JSON object (for rate-limit keys, which must never fail)."""
    try:
        return read_json_object().get(name)
    except SluiceError:
        return None


def require_json_content_type() -> None:
    """For cookie-authenticated writes: a cross-site HTML form cannot send
    `application/json` without a CORS preflight, so this closes CSRF even where
    SameSite=Lax does not apply (sibling subdomains, old browsers)."""
    if request.mimetype != "application/json":
        raise Invalid(
            "Content-Type must be application/json",
            {"Content-Type": request.mimetype or "missing"},
        )
