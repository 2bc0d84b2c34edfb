"""Fixtures of the Celery tests: a capture server for unit tests, plus the rigs
(broker, worker subprocess, agent subprocess) in rig.py for the real ones."""

from __future__ import annotations

import uuid

import pytest

from .capture import CaptureServer


@pytest.fixture
def capture():
    server = CaptureServer()
    yield server
    server.close()


@pytest.fixture
def queue():
    """A queue name of this test's own, so tests never see each other's tasks."""
    return f"q-{uuid.uuid4().hex[:10]}"
