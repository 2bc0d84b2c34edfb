"""Settings at app start: production refuses unsafe defaults; production cookies are Secure.

Only what needs a real process or server is here: that `create_app()` exits non-zero
naming the bad setting, and the headers a running server sends. How each setting is
read, bounded and checked is in tests/unit/test_config.py (pure, no Redis).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ROOT


def start_app(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLUICE_", "REDIS_URL", "SECRET_KEY"))
    }
    return subprocess.run(
        [sys.executable, "-c", "from sluice import create_app; create_app()"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_production_requires_secret_key(redis_url):
    result = start_app({"SLUICE_ENV": "production", "REDIS_URL": redis_url})
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_production_requires_redis_url():
    result = start_app({"SLUICE_ENV": "production", "SECRET_KEY": "x" * 64})
    assert result.returncode != 0
    assert "REDIS_URL is required" in result.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("SLUICE_HEARTBEAT_SECONDS", "soon"),
        ("SLUICE_STREAM_MAXLEN", "0"),
        ("SLUICE_ENV", "staging"),
    ],
)
def test_malformed_setting_is_named(redis_url, name, value):
    result = start_app({"REDIS_URL": redis_url, name: value})
    assert result.returncode != 0
    assert name in result.stderr


def test_production_cookie_is_secure_httponly_lax(start_server, account):
    production = start_server(SLUICE_ENV="production", SECRET_KEY="s" * 64)
    response = requests.post(
        production.url + "/api/auth/login",
        json={"email": account.email, "password": account.password},
    )
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_security_headers(server):
    headers = requests.get(server.url + "/api/health").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
