"""Fixtures of the unit tier: no Redis, no gunicorn, no subprocess."""

from __future__ import annotations

import pytest
from gevent import socket as gsocket


@pytest.fixture
def pair():
    """A connected pair of (gevent) sockets: a client's socket and the server's end."""
    a, b = gsocket.socketpair()
    yield a, b
    a.close()
    b.close()
