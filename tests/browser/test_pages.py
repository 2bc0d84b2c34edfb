"""Page routes without a browser: login redirects, headers, and the `next` parameter."""

from __future__ import annotations

import pytest
import requests

from sluice.web.pages import safe_next


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, "/"),
        ("", "/"),
        ("/connections/abc?x=1", "/connections/abc?x=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
    ],
)
def test_safe_next(target, expected):
    assert safe_next(target) == expected


def test_pages_redirect_anonymous_users_and_send_no_store(server):
    for path in ("/", "/connections/8f1b7a9e-3d7c-4a35-9d86-1a2b3c4d5e6f"):
        response = requests.get(server.url + path, allow_redirects=False, timeout=5)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")
    login = requests.get(server.url + "/login", timeout=5)
    assert login.status_code == 200 and "text/html" in login.headers["Content-Type"]
    assert login.headers["Cache-Control"] == "no-store"
    assert "<script>" not in login.text and "style=" not in login.text  # CSP: no inline code
    css = requests.get(server.url + "/static/app.css", timeout=5)
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
