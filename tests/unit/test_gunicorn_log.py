"""sluice/gunicorn_log.py: gunicorn's logger in SLUICE_LOG_FORMAT, over gunicorn's own
Config and a response-shaped object (no server)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from sluice import gunicorn_conf
from sluice.gunicorn_log import Logger, access_fields, log_format
from sluice.logs import REQUEST_ID

ENVIRON = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/api/nope",
    "QUERY_STRING": "a=1",
    "RAW_URI": "/api/nope?a=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "10.0.0.7",
    "HTTP_USER_AGENT": 'agent "quoted"\nnext',
    "sluice.request_id": "from-environ",
}


def response(headers=(("Content-Type", "application/json"), ("X-Request-ID", "rid-1"))):
    return SimpleNamespace(status="404 NOT FOUND", status_code=404, headers=list(headers), sent=65)


@pytest.fixture
def make_logger(monkeypatch):
    made = []

    def make(fmt: str | None, accesslog: str | None = "-") -> Logger:
        if fmt is None:
            monkeypatch.delenv("SLUICE_LOG_FORMAT", raising=False)
        else:
            monkeypatch.setenv("SLUICE_LOG_FORMAT", fmt)
        cfg = Config()
        cfg.set("accesslog", accesslog)
        cfg.set("errorlog", "-")
        cfg.set("access_log_format", gunicorn_conf.access_log_format)
        logger = Logger(cfg)
        made.append(logger)
        return logger

    yield make
    for logger in made:
        for log in (logger.error_log, logger.access_log):
            for handler in list(log.handlers):
                if getattr(handler, "_gunicorn", False):
                    log.removeHandler(handler)


def test_gunicorn_conf_names_this_logger():
    assert gunicorn_conf.logger_class == "sluice.gunicorn_log.Logger"
    assert Config().logger_class is not Logger  # (the default, for contrast)
    cfg = Config()
    cfg.set("logger_class", gunicorn_conf.logger_class)
    assert cfg.logger_class is Logger


@pytest.mark.parametrize(
    "raw, fmt", [(None, "text"), ("json", "json"), ("Json", "json"), ("xml", "text")]
)
def test_log_format_falls_back_to_text_when_malformed(monkeypatch, raw, fmt):
    if raw is None:
        monkeypatch.delenv("SLUICE_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("SLUICE_LOG_FORMAT", raw)
    assert log_format() == fmt


def test_access_fields():
    fields = access_fields(response(), ENVIRON, timedelta(seconds=1, microseconds=2500))
    assert fields == {
        "method": "GET",
        "path": "/api/nope",
        "query": "a=1",
        "status": 404,
        "bytes": 65,
        "duration_ms": 1002.5,
        "remote_addr": "10.0.0.7",
        "user_agent": 'agent "quoted"\nnext',
        "referer": None,
        "protocol": "HTTP/1.1",
        "request_id": "rid-1",
    }


def test_access_fields_without_the_header_take_the_environs_id():
    resp = response(headers=[("x-request-id", "lower")])
    assert access_fields(resp, ENVIRON, timedelta())["request_id"] == "lower"
    resp = response(headers=[])
    assert access_fields(resp, ENVIRON, timedelta())["request_id"] == "from-environ"
    resp = SimpleNamespace(status="502 BAD GATEWAY", headers=None, sent=None)
    fields = access_fields(resp, {"REQUEST_METHOD": "GET"}, timedelta())
    assert fields["status"] == 502 and fields["request_id"] is None and fields["bytes"] is None


def test_json_access_and_error_lines(make_logger, capsys):
    logger = make_logger("json")
    token = REQUEST_ID.set("in-request")
    try:
        logger.access(response(), SimpleNamespace(headers=[]), ENVIRON, timedelta(milliseconds=3))
        logger.error("worker\nfailed")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("Error handling request")
    finally:
        REQUEST_ID.reset(token)
    captured = capsys.readouterr()
    access = [json.loads(line) for line in captured.out.splitlines()]
    errors = [json.loads(line) for line in captured.err.splitlines()]
    assert len(access) == 1 and len(errors) == 2
    line = access[0]
    assert line["logger"] == "gunicorn.access" and line["level"] == "info"
    assert line["message"] == "GET /api/nope 404"
    assert line["request_id"] == "rid-1", "the id the response carried"
    assert (line["method"], line["path"], line["status"], line["bytes"]) == (
        "GET",
        "/api/nope",
        404,
        65,
    )
    assert line["duration_ms"] == 3.0 and line["remote_addr"] == "10.0.0.7"
    assert line["user_agent"] == 'agent "quoted"\nnext'
    assert errors[0]["logger"] == "gunicorn.error" and errors[0]["message"] == "worker\nfailed"
    assert errors[0]["level"] == "error" and errors[0]["request_id"] == "in-request"
    assert errors[1]["exception"].endswith("RuntimeError: boom")


def test_json_without_an_access_log_writes_no_access_line(make_logger, capsys):
    logger = make_logger("json", accesslog=None)
    logger.access(response(), SimpleNamespace(headers=[]), ENVIRON, timedelta())
    assert capsys.readouterr().out == ""


def test_a_failing_access_line_is_logged_as_an_error(make_logger, capsys):
    logger = make_logger("json")
    broken = SimpleNamespace(status="200 OK", headers=5, sent=0)  # headers not iterable
    logger.access(broken, SimpleNamespace(headers=[]), {}, timedelta())
    err = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert err[0]["message"] == "Could not write the access log line" and "exception" in err[0]


@pytest.mark.parametrize("fmt", [None, "text"])
def test_text_is_gunicorns_own_with_the_request_id_last(make_logger, capsys, fmt):
    logger = make_logger(fmt)
    logger.access(response(), SimpleNamespace(headers=[]), ENVIRON, timedelta())
    logger.info("Booting worker")
    captured = capsys.readouterr()
    access = captured.out.strip()
    assert access.startswith("10.0.0.7 - - [") and access.endswith(
        '"GET /api/nope?a=1 HTTP/1.1" 404 65 "-" "agent \\"quoted\\"\nnext" rid-1'
    )
    assert "[INFO] Booting worker" in captured.err
    for line in (access, captured.err):
        with pytest.raises(json.JSONDecodeError):
            json.loads(line.splitlines()[0])


def test_setup_again_adds_no_second_filter(make_logger):
    logger = make_logger("json")
    logger.setup(logger.cfg)
    for log in (logger.error_log, logger.access_log):
        (handler,) = [h for h in log.handlers if getattr(h, "_gunicorn", False)]
        assert len(handler.filters) == 1
        assert isinstance(handler.formatter, logging.Formatter)


def test_post_request_clears_the_request_id():
    """gunicorn calls it once a request is over (body closed, access line written): later
    lines of the same connection's greenlet belong to no request."""
    token = REQUEST_ID.set("finished")
    try:
        gunicorn_conf.post_request(None, None, {}, None)
        assert REQUEST_ID.get() is None
    finally:
        REQUEST_ID.reset(token)
