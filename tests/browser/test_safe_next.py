"""The login page's `next` parameter only ever leads to this site (no browser needed)."""

from __future__ import annotations

import pytest

from sluice.web import safe_next


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
