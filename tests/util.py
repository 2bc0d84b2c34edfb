"""Builders for producer events, a thin ingest helper, and raw Redis clients."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
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


# -- raw Redis: one node or a cluster ---------------------------------------------


@functools.cache
def is_cluster(url: str) -> bool:
    """Whether the Redis at `url` is a cluster node (INFO cluster: cluster_enabled:1)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return int(client.info("cluster").get("cluster_enabled", 0)) == 1
    finally:
        client.close()


class ClusterClient(redis.RedisCluster):
    """redis.RedisCluster whose CLIENT LIST and CLIENT KILL ID span the cluster.

    RedisCluster sends both to one node. Here `client_list()` asks every node
    (masters and replicas) and names each entry's node in its id ("host:port/id",
    plus a "node" field); `client_kill_filter(_id=...)` with such an id kills that
    client on that node. So a test can count or drop a process's connections
    wherever they are, as it does on one Redis.
    """

    def client_list(self, _type=None, client_id=[], **kwargs):  # noqa: B006 (redis-py's)
        if "target_nodes" in kwargs:
            return super().client_list(_type, client_id, **kwargs)
        entries = []
        for node in self.get_nodes():
            for entry in super().client_list(_type, client_id, target_nodes=node, **kwargs):
                entries.append({**entry, "id": f"{node.name}/{entry['id']}", "node": node.name})
        return entries

    def client_kill_filter(self, _id=None, **kwargs):
        if _id is not None and "/" in str(_id) and "target_nodes" not in kwargs:
            node_name, _, client_id = str(_id).rpartition("/")
            node = self.get_node(node_name=node_name)
            return super().client_kill_filter(_id=client_id, target_nodes=node, **kwargs)
        return super().client_kill_filter(_id=_id, **kwargs)


def raw_redis(url: str, **kwargs: Any) -> redis.Redis | ClusterClient:
    """A client of the Redis at `url` for plain key commands: redis.Redis on one
    node, a RedisCluster (ClusterClient) when it is a cluster."""
    if is_cluster(url):
        return ClusterClient.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)
