"""Request ids: `X-Request-ID` in, the same (or a new) id out on every response.

A WSGI middleware, outermost, so that the id is known before anything else
runs (a 429 from the rate limiter, a 404, a 500 and the event stream all carry
it) and every log record made while the request is handled carries it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..logs import ENVIRON_KEY, REQUEST_ID, REQUEST_ID_HEADER, request_id_from

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_HEADER_LOWER = REQUEST_ID_HEADER.lower()


class RequestIdMiddleware:
    """Takes the request's id from `X-Request-ID` when it is sane (else makes one),
    keeps it in the environ (`sluice.request_id`, for the access log) and in the
    log context, and sends it back as `X-Request-ID`, replacing any the app set.

    The log context is cleared by the next request on the same connection, or by
    `sluice.gunicorn_conf.post_request` once gunicorn is done with this one (a
    stream's body runs after the view has returned, so it cannot be cleared here).
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        environ[ENVIRON_KEY] = request_id
        REQUEST_ID.set(request_id)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [(k, v) for k, v in headers if k.lower() != _HEADER_LOWER]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
