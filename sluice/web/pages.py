"""The dashboard: server-rendered page shells whose data comes from the JSON API and the SSE stream.

The views only decide *who may see a page* (flask-login's ``current_user``) and hand
the page its few static facts through ``data-*`` attributes. Everything else is done by
the ES modules in ``static/js`` talking to ``/api/...``, so the pages work under
``Content-Security-Policy: default-src 'self'`` (no inline script, no inline style).
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from .. import contract

bp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


def safe_next(target: str | None) -> str:
    """Return a same-site path to go to after login, or ``/``.

    Only relative paths are accepted: an open redirect (``//evil``, ``https://evil``,
    ``/\\evil``) falls back to the connections page.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _login_redirect() -> Response:
    path = request.full_path if request.query_string else request.path
    return redirect(url_for("web.login", next=path))


@bp.get("/login")
def login() -> Response | str:
    nxt = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(nxt)
    return render_template("login.html", next_url=nxt)


@bp.get("/")
def connections() -> Response | str:
    if not current_user.is_authenticated:
        return _login_redirect()
    return render_template("connections.html")


@bp.get("/connections/<connection_id>")
def live(connection_id: str) -> Response | str:
    if not current_user.is_authenticated:
        return _login_redirect()
    try:
        canonical = str(uuid.UUID(connection_id))
    except ValueError:
        abort(404)
    return render_template("live.html", connection_id=canonical)


def contract_module() -> str:
    """The contract's lists as an ES module, so the dashboard's JavaScript reads
    the same event names and states as the server (`sluice.contract`)."""
    values = {
        "EVENT_NAMES": list(contract.EVENT_NAMES),
        "JOB_STATE_CHANGE": contract.JOB_STATE_CHANGE,
        "WORKER_HEARTBEAT": contract.WORKER_HEARTBEAT,
        "WORKER_STATE_CHANGE": contract.WORKER_STATE_CHANGE,
        "QUEUE_SNAPSHOT": contract.QUEUE_SNAPSHOT,
        "COMMAND_RESULT": contract.COMMAND_RESULT,
        "HEARTBEAT": contract.HEARTBEAT,
        "STREAM_RESET": contract.STREAM_RESET,
        "JOB_STATES": list(contract.JOB_STATES),
        "WORKER_STATES": list(contract.WORKER_STATES),
        "SIGNALS": list(contract.SIGNALS),
    }
    lines = ["// Generated from sluice/contract.py by the server; do not edit."]
    lines += [f"export const {name} = {json.dumps(value)};" for name, value in values.items()]
    return "\n".join(lines) + "\n"


_CONTRACT_JS = contract_module()


@bp.get("/static/js/contract.js")
def contract_js() -> Response:
    response = Response(_CONTRACT_JS, mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.after_request
def _page_headers(response: Response) -> Response:
    """Pages carry per-user content: never cache them in shared caches."""
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response
