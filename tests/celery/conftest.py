"""Fixtures of the Celery tests: a capture server for unit tests, plus the rigs
(broker, worker subprocess, agent subprocess) in rig.py for the real ones."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import embedded_valkey

from .capture import CaptureServer


@pytest.fixture
def capture():
    server = CaptureServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def broker_redis_url(redis_url, redis_is_cluster):
    """A Redis for Celery's broker: the test Redis, except on a Redis Cluster
    (kombu speaks to one node, with databases): then an embedded Valkey."""
    if not redis_is_cluster:
        yield redis_url
        return
    with embedded_valkey() as url:
        yield url


@pytest.fixture
def queue():
    """A queue name of this test's own, so tests never see each other's tasks."""
    return f"q-{uuid.uuid4().hex[:10]}"
