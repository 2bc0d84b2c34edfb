"""Builders for producer events and a thin ingest helper."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import requests


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _event(
    kind: str, connection_id: str, payload_key: str, payload: dict, event_id: str | None
) -> dict:
    event = {
        "type": kind,
        "timestamp": now(),
        "framework": "celery",
        "connectionId": connection_id,
        payload_key: payload,
    }
    if event_id is not None:
        event["id"] = event_id
    return event


def job_event(
    connection_id: str,
    external_id: str,
    state: str,
    *,
    event_id: str | None = None,
    name: str = "app.tasks.send_email",
    **fields,
) -> dict:
    return _event(
        "job_state_change",
        connection_id,
        "job",
        {"externalId": external_id, "name": name, "state": state, **fields},
        event_id,
    )


def worker_event(
    connection_id: str,
    external_id: str,
    state: str,
    *,
    kind: str = "worker_heartbeat",
    event_id: str | None = None,
    **fields,
) -> dict:
    return _event(
        kind,
        connection_id,
        "worker",
        {"externalId": external_id, "state": state, **fields},
        event_id,
    )


def queue_event(
    connection_id: str, name: str, depth: int, *, event_id: str | None = None, **fields
) -> dict:
    return _event(
        "queue_snapshot", connection_id, "queue", {"name": name, "depth": depth, **fields}, event_id
    )


def ingest(
    base_url: str, api_key: str, connection_id: str, events: list[dict]
) -> requests.Response:
    """POST /api/ingest with the key. `connection_id` is kept for symmetry and checks."""
    for event in events:
        event.setdefault("connectionId", connection_id)
    return requests.post(
        base_url + "/api/ingest",
        json={"events": events},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )


def jobs(connection_id: str, count: int, state: str = "queued") -> list[dict]:
    """`count` distinct job events, each with a producer id."""
    return [
        job_event(connection_id, f"job-{uuid.uuid4()}", state, event_id=str(uuid.uuid4()))
        for _ in range(count)
    ]


def wait_until(predicate, timeout: float = 10, what: str = "a condition", interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
