"""The dashboard's page views: the login redirect target, and contract.js (no Redis)."""

from __future__ import annotations

import json
import re

import pytest

from sluice import contract
from sluice.web.app import create_app
from sluice.web.pages import contract_module, safe_next


@pytest.mark.parametrize(
    "target, expected",
    [
        (None, "/"),
        ("", "/"),
        ("/", "/"),
        ("/connections/abc", "/connections/abc"),
        ("/connections/abc?x=1#frag", "/connections/abc?x=1#frag"),
        ("/a//b", "/a//b"),
        ("//evil.example", "/"),
        ("///evil.example", "/"),
        ("https://evil.example/", "/"),
        ("http:/evil", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("/\tevil", "/"),
        ("/\n//evil", "/"),
        ("/\x00", "/"),
        (" /x", "/"),
    ],
)
def test_safe_next(target, expected):
    assert safe_next(target) == expected


def exports(module: str) -> dict[str, object]:
    lines = module.splitlines()
    assert lines[0].startswith("// Generated from sluice/contract.py")
    values = {}
    for line in lines[1:]:
        match = re.fullmatch(r"export const ([A-Z_]+) = (.*);", line)
        assert match, line
        values[match[1]] = json.loads(match[2])
    return values


def test_contract_module_exports_the_contract():
    values = exports(contract_module())
    assert values["EVENT_NAMES"] == list(contract.EVENT_NAMES)
    assert values["JOB_STATES"] == list(contract.JOB_STATES)
    assert values["WORKER_STATES"] == list(contract.WORKER_STATES)
    assert values["HEARTBEAT"] == contract.HEARTBEAT
    assert values["STREAM_RESET"] == contract.STREAM_RESET
    assert [values[n] for n in ("JOB_STATE_CHANGE", "WORKER_HEARTBEAT")] == [
        contract.JOB_STATE_CHANGE,
        contract.WORKER_HEARTBEAT,
    ]
    assert values["WORKER_STATE_CHANGE"] == contract.WORKER_STATE_CHANGE
    assert values["QUEUE_SNAPSHOT"] == contract.QUEUE_SNAPSHOT
    # The live view's actions: the result event it waits for, the signals it offers.
    assert values["COMMAND_RESULT"] == contract.COMMAND_RESULT
    assert values["SIGNALS"] == list(contract.SIGNALS)
    assert set(values) == {
        "EVENT_NAMES",
        "JOB_STATE_CHANGE",
        "WORKER_HEARTBEAT",
        "WORKER_STATE_CHANGE",
        "QUEUE_SNAPSHOT",
        "COMMAND_RESULT",
        "HEARTBEAT",
        "STREAM_RESET",
        "JOB_STATES",
        "WORKER_STATES",
        "SIGNALS",
    }


def test_contract_module_follows_the_contract(monkeypatch):
    monkeypatch.setattr(contract, "JOB_STATES", ("queued", "new_state"))
    assert exports(contract_module())["JOB_STATES"] == ["queued", "new_state"]


@pytest.fixture(scope="module")
def client():
    app = create_app(overrides={"redis_url": "redis://127.0.0.1:1/0", "secret_key": "x" * 32})
    return app.test_client()


def test_contract_js_is_served_as_javascript(client):
    response = client.get("/static/js/contract.js")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.get_data(as_text=True) == contract_module()


def test_signed_out_pages_redirect_to_login_with_next(client):
    response = client.get("/connections/0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e?x=1")
    assert response.status_code == 302
    assert response.headers["Location"] == (
        "/login?next=/connections/0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e?x%3D1"
    )
    assert client.get("/").headers["Location"] == "/login?next=/"


def test_login_page_carries_only_a_safe_next(client):
    response = client.get("/login?next=//evil.example")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b"evil.example" not in response.data
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert b"/connections/abc" in client.get("/login?next=/connections/abc").data


def live_page(client) -> str:
    from flask import render_template

    app = client.application
    with app.test_request_context("/connections/0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e"):
        return render_template("live.html", connection_id="0b6f3b9e-6a1b-4c8e-9d3e-2f4a5b6c7d8e")


def test_live_page_is_a_csp_safe_shell(client):
    """The CSP allows no inline script or style: only module scripts from /static."""
    html = live_page(client)
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts == [""]  # one script element, with no inline code
    assert re.findall(r"<script\b([^>]*)>", html) == [' type="module" src="/static/js/live.js"']
    assert "style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_live_page_has_the_job_index_controls(client):
    html = live_page(client)
    # "Load more" through the history, the filters bar, the job drawer.
    assert re.search(r'<button type="button"[^>]*data-load-more[^>]*>Load more</button>', html)
    assert "data-scope" in html and "data-jobs-error" in html and 'role="alert"' in html
    drawer = re.search(r"<aside[^>]*data-drawer[^>]*>", html)
    assert drawer and 'role="dialog"' in drawer[0] and 'aria-labelledby="drawer-title"' in drawer[0]
    assert " hidden" in drawer[0]  # closed until a job is opened
    assert 'aria-label="Close job details"' in html
    # The search box has a label naming what it searches.
    assert re.search(r'<label class="sr-only" for="job-search">Search jobs by job id', html)
