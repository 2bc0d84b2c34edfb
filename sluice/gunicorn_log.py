"""gunicorn's logger in Sluice's log format (`logger_class` in `sluice.gunicorn_conf`).

With SLUICE_LOG_FORMAT=json, gunicorn's error log and access log are JSON lines
like the app's (`sluice.logs.JsonFormatter`); an access line has the request's
`method`, `path`, `query`, `status`, `bytes`, `duration_ms`, `remote_addr`,
`user_agent`, `referer` and `request_id` (the `X-Request-ID` the response
carried) as fields. With `text` (the default) gunicorn logs as it always has;
the access line's format (`access_log_format`) ends with the request id.
"""

from __future__ import annotations

import logging
import logging.handlers
from datetime import timedelta
from typing import Any

from gunicorn import glogging

from .config import ConfigError, read_setting
from .logs import ENVIRON_KEY, FIELDS, REQUEST_ID_HEADER, RequestIdFilter, formatter

_HEADER_LOWER = REQUEST_ID_HEADER.lower()


def log_format() -> str:
    """SLUICE_LOG_FORMAT, or `text` when it is malformed (the master then refuses to
    start, in `on_starting`, naming it: in text)."""
    try:
        value: str = read_setting("log_format")
    except ConfigError:
        return "text"
    return value


def _response_header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return str(value)
    return None


def access_fields(resp: Any, environ: dict[str, Any], request_time: timedelta) -> dict[str, Any]:
    """One request's access-log fields, from gunicorn's response and the WSGI environ.

    `bytes` is what gunicorn sent: a stream's frames written straight to its socket
    (`sluice.fanout.sinks.SocketSink`) are not counted.
    """
    status = getattr(resp, "status_code", None)
    if status is None:
        try:
            status = int(str(resp.status).split(None, 1)[0])
        except (AttributeError, ValueError, IndexError):
            status = None
    request_id = _response_header(getattr(resp, "headers", None), _HEADER_LOWER)
    return {
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING") or None,
        "status": status,
        "bytes": getattr(resp, "sent", None),
        "duration_ms": round(request_time.total_seconds() * 1000, 3),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "user_agent": environ.get("HTTP_USER_AGENT"),
        "referer": environ.get("HTTP_REFERER"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "request_id": request_id or environ.get(ENVIRON_KEY),
    }


class Logger(glogging.Logger):
    """gunicorn's `Logger`, formatting its error and access logs as SLUICE_LOG_FORMAT says."""

    log_format = "text"

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.log_format = log_format()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not getattr(handler, "_gunicorn", False):
                    continue  # the operator's own (logconfig)
                if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
                    handler.addFilter(RequestIdFilter())
                if self.log_format == "json" and not isinstance(
                    handler, logging.handlers.SysLogHandler
                ):
                    handler.setFormatter(formatter("json"))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if self.log_format != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        try:
            fields = access_fields(resp, environ, request_time)
            request_id = fields.pop("request_id")
            self.access_log.info(
                "%s %s %s",
                fields["method"],
                fields["path"],
                fields["status"],
                extra={"request_id": request_id, FIELDS: fields},
            )
        except Exception:
            self.exception("Could not write the access log line")
