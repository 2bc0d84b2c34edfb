"""The service's log format (SLUICE_LOG_FORMAT) and request ids (standard library only).

- `json`: one JSON object per line: `time` (UTC ISO 8601), `level`, `logger`,
  `message`, `pid`, `request_id` inside a request, `exception` (the traceback as
  one string) and any structured fields of the record (the access log's). Every
  character outside printable ASCII is escaped, so no message can break a line.
- `text`: human-readable, as before; inside a request the logger name is
  followed by the request id in brackets.

A request id is taken from the request's `X-Request-ID` when it is sane (1 to
128 of `A-Z a-z 0-9 . _ -`), else generated (32 hex digits). It lives in a
context variable for the length of the request; each greenlet (gevent) and
thread has its own, so concurrent requests never see each other's.
`configure()` installs the handler the app's loggers (and others') write
through; `sluice.gunicorn_log` puts gunicorn's logs in the same format.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from .timefmt import iso_from_ms

#: The header a request id comes in and goes out with.
REQUEST_ID_HEADER = "X-Request-ID"
#: The WSGI environ key the request's id is kept under (for the access log).
ENVIRON_KEY = "sluice.request_id"
#: What an incoming id may be; anything else is replaced, never echoed.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: The current request's id (None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("sluice_request_id", default=None)

#: The record attribute holding structured fields (a dict) for the JSON format.
FIELDS = "sluice_fields"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_IN_REQUEST = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

#: Marks the handler `configure` installed.
_MARK = "_sluice"


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The request's id: the client's `X-Request-ID` when it is sane, else a new one."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` (the current request's, or None) unless the caller
    gave one (`extra={"request_id": ...}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # a bad log call: say so, on one line, rather than fail
        return f"{record.msg!s} [unformattable arguments {record.args!r}: {exc}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_from_ms(int(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            out["request_id"] = request_id
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: newlines, U+2028 and every other line break are escaped.
        return json.dumps(out, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable format; inside a request, with its id after the logger name."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._in_request = logging.Formatter(TEXT_FORMAT_IN_REQUEST)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is not None:
            return self._in_request.format(record)
        return super().format(record)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a SLUICE_LOG_FORMAT value (`json`, else text)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, stream: Any = None) -> logging.Handler:
    """Install (once; again: re-format) the handler every log record goes through.

    It sits on the root logger, so the app's `sluice.*` loggers (INFO and up) and
    other libraries' (WARNING and up, e.g. redis, flask-limiter) share one format.
    With `json`, Python warnings are logged too (instead of printed on two lines).
    Returns the handler.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream)
        setattr(handler, _MARK, True)
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    handler.setFormatter(formatter(log_format))
    app_logger = logging.getLogger("sluice")
    if app_logger.level == logging.NOTSET:
        app_logger.setLevel(logging.INFO)
    if log_format == "json":
        logging.captureWarnings(True)
    return handler
