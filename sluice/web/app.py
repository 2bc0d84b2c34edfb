"""The app factory: settings, Redis, extensions and blueprints, wired once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from werkzeug.routing import PathConverter

from ..config import load_settings
from ..errors import Forbidden
from ..fanout.hub import Hub
from ..logs import configure as configure_logging
from ..store import client as store_client
from ..store import users
from ..store.embedded import start_embedded
from ..store.events import RedisEventLog
from . import metrics
from .errors import register_error_handlers
from .extensions import SluiceState, limiter, login_manager
from .request_id import RequestIdMiddleware


class AnyTextConverter(PathConverter):
    """`<ref:name>`: the rest of the path, slashes and newlines included (`path`
    stops at a newline, so such an id would be a 404 before authentication)."""

    regex = r"[^/][\s\S]*?"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """The app factory.

    Redis clients are made here, not at import time, so that under gunicorn's
    gevent worker they are created after monkey patching.
    """
    settings = load_settings(overrides=overrides)
    configure_logging(settings.log_format)
    app = Flask(__name__, static_folder=None)
    # `/api//ingest` is not `/api/ingest`: no 308 redirect (which werkzeug would
    # build from the Host header); unknown paths are plain 404s.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["ref"] = AnyTextConverter

    redis_url = settings.redis_url or start_embedded()
    client = store_client.connect(
        redis_url,
        max_connections=settings.redis_max_connections,
        cluster={"yes": True, "no": False}.get(settings.redis_cluster),
    )
    limiter_uri, limiter_options = store_client.limiter_storage(
        redis_url, client, settings.redis_max_connections
    )
    app.config.update(
        SECRET_KEY=settings.secret_key or users.development_secret(client),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        SESSION_COOKIE_NAME="sluice_session",
        PERMANENT_SESSION_LIFETIME=timedelta(days=settings.session_days),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings.is_production,
        # The limiter's counters go through the app's pool (bounded, with
        # timeouts), not a second, unbounded pool of its own (on a cluster, a
        # cluster client of the limiter's own, bounded the same way).
        RATELIMIT_STORAGE_URI=limiter_uri,
        RATELIMIT_STORAGE_OPTIONS=limiter_options,
        RATELIMIT_STRATEGY="fixed-window",  # one INCR per request (moving-window: a Lua call + a stats read)
        RATELIMIT_HEADERS_ENABLED=False,  # 429s still carry Retry-After (errors.py)
        JSON_SORT_KEYS=False,
    )

    events = RedisEventLog(client)
    app.extensions["sluice"] = SluiceState(
        settings=settings, redis=client, hub=Hub(settings, events)
    )
    login_manager.init_app(app)
    login_manager.session_protection = "basic"
    metrics.init_app(app)  # before the limiter: a refused ingest is timed too
    limiter.init_app(app)
    register_error_handlers(app)

    from . import pages
    from .api import BLUEPRINTS

    for blueprint in (*BLUEPRINTS, pages.bp, metrics.bp):
        app.register_blueprint(blueprint)

    app.before_request(_check_cross_site_write)
    app.after_request(_security_headers)
    if settings.trusted_proxies:
        # Client IPs for rate limits come from the proxy's X-Forwarded-For.
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    # Outermost: every response, whatever answers it, carries X-Request-ID.
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


#: Methods that change something (and so must not come from another site).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HSTS = "max-age=63072000; includeSubDomains"


def _check_cross_site_write() -> None:
    """Cookie-authenticated writes must come from our own pages (CSRF).

    Browsers send `Sec-Fetch-Site` and `Origin` on every POST/DELETE; a write
    another site's page makes is refused with 403, whatever its content type.
    Clients that send neither (curl, the CLI, producers) are not browsers and
    are not affected; API-key requests carry no ambient credential.
    """
    if request.method not in UNSAFE_METHODS or "Authorization" in request.headers:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:  # every current browser: the browser's own verdict
        if site not in ("same-origin", "none"):
            raise Forbidden("Cross-site request refused", {"Sec-Fetch-Site": site[:40]})
        return
    origin = request.headers.get("Origin")
    if origin is not None and _host_port(origin) != _host_port("//" + request.host):
        raise Forbidden("Cross-site request refused", {"Origin": origin[:200]})


def _host_port(url: str) -> tuple[str, int | None] | None:
    """(host, port) of an origin, for older browsers without `Sec-Fetch-Site`. The
    scheme is not compared: a TLS-terminating proxy may hand us plain HTTP."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None or (port, parts.scheme) in ((80, "http"), (443, "https")):
        port = None
    return parts.hostname.lower(), port


def _security_headers(response: Response) -> Response:
    headers = response.headers
    if current_app.extensions["sluice"].settings.is_production:
        headers.setdefault("Strict-Transport-Security", HSTS)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    )
    return response
