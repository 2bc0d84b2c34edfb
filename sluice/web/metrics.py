"""`GET /metrics` (Prometheus text format), and the request-level service metrics.

Access (the same 404 for every refusal, as for a path that does not exist, so
that nobody learns the endpoint is there):

- `SLUICE_METRICS_TOKEN` set: only `Authorization: Bearer <token>` (compared
  in constant time);
- unset, in production: nobody (404);
- unset, in development: anyone.

It is not rate-limited and counts as no API request. The metrics themselves
are declared in `sluice.metrics`; the queue and worker gauges are read from
Redis at each scrape (`web.jobmetrics.read_gauges`); `init_app` counts ingest requests and stream
opens by the status they were answered with, whatever answered them (the view,
an error handler, the rate limiter).
"""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Flask, Response, g, request

from ..errors import NotFound
from ..metrics import (
    CONTENT_TYPE,
    INGEST_SECONDS,
    STREAM_OPENS_BY_RESULT,
    JobGauges,
    exposition,
    ingest_requests,
)
from .extensions import state
from .jobmetrics import read_gauges

bp = Blueprint("metrics", __name__)

#: The endpoints whose requests are counted (and timed) by `init_app`'s hooks.
INGEST_ENDPOINT = "ingest.ingest"
STREAM_ENDPOINT = "events.stream"

#: A stream request's status -> its `result` label (anything else: "error").
STREAM_RESULT = {
    200: "ok",
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    429: "rejected",
    503: "unavailable",
}


def allowed(token: str | None, production: bool, authorization: str | None) -> bool:
    """Whether a request with this `Authorization` header may read the metrics."""
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token.encode("utf-8", "replace")
        )
    return not production


@bp.get("/metrics")
def metrics() -> Response:
    settings = state().settings
    if not allowed(
        settings.metrics_token, settings.is_production, request.headers.get("Authorization")
    ):
        raise NotFound("Not found")
    app_state = state()
    gauges = JobGauges(lambda: read_gauges(app_state.redis, settings))
    return Response(
        exposition(gauges), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


def init_app(app: Flask) -> None:
    """Count ingest requests and stream opens. Call before the rate limiter's
    `init_app`, so that the timer starts before a request can be refused."""
    app.before_request(_start_timer)
    app.after_request(_count)


def _start_timer() -> None:
    if request.endpoint == INGEST_ENDPOINT:
        g.sluice_started = time.perf_counter()


def _count(response: Response) -> Response:
    endpoint = request.endpoint
    if endpoint == INGEST_ENDPOINT:
        ingest_requests(response.status_code).inc()
        started = g.get("sluice_started")
        if started is not None:
            INGEST_SECONDS.observe(time.perf_counter() - started)
    elif endpoint == STREAM_ENDPOINT:
        STREAM_OPENS_BY_RESULT[STREAM_RESULT.get(response.status_code, "error")].inc()
    return response
