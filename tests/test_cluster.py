"""Sluice on a Redis Cluster: a failover under load.

Runs when the suite runs against the local cluster (`SLUICE_TEST_REDIS=cluster`,
as `.ci/run` does); every other integration test runs there too. Here: while
streams are open and producers post, each primary in turn hands over to its
replica (`CLUSTER FAILOVER`). Open streams keep going, no 500 is answered, and
every event acknowledged with a 202 reaches its stream exactly once, in order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import requests

from tests.conftest import make_account
from tests.sse import open_stream
from tests.util import job_event, raw_redis, wait_until

pytestmark = pytest.mark.cluster_only

CONNECTIONS_PER_PRIMARY = 2
BATCH = 5


def accounts_on_every_primary(redis_url: str, per_primary: int) -> list:
    """Accounts whose connections' slots are spread over every primary."""
    client = raw_redis(redis_url)
    by_node: dict[str, list] = {}
    primaries = len(client.get_primaries())
    try:
        while len(by_node) < primaries or any(len(a) < per_primary for a in by_node.values()):
            account = make_account(redis_url)
            node = client.get_node_from_key(f"sluice:{{{account.connection_id}}}:events")
            if len(by_node.setdefault(node.name, [])) < per_primary:
                by_node[node.name].append(account)
    finally:
        client.close()
    return [a for accounts in by_node.values() for a in accounts]


def test_notifications_wait_on_descriptors_past_1024(redis_url):
    """A worker holds thousands of sockets: the cluster's notification wait
    must not use select(), which refuses descriptors past 1,024."""
    from sluice.store.client import connect
    from sluice.store.notifications import ClusterNotifications

    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    client = connect(redis_url)
    notifications = ClusterNotifications(client)
    try:
        channel, key = b"sluice:{fd-test}:notify", b"sluice:{fd-test}:events"
        notifications.listen(channel, key)
        assert wait_until(lambda: notifications.poll(0.2), 5, "the subscription") == {key}
        client.spublish(channel, key)
        assert notifications.poll(2.0) == {key}
        # Waiting with nothing to read times out quietly.
        assert notifications.poll(0.05) == set()
    finally:
        notifications.close()
        client.close()
        for fd in filler:
            os.close(fd)


class Producer(threading.Thread):
    """Posts batches to one connection until stopped; a batch answered 503 is sent
    again with the same producer ids (as the Celery bridges do), so it is
    appended once whatever happened."""

    def __init__(self, base_url: str, account) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.account = account
        self.stop = threading.Event()
        self.acknowledged: list[str] = []  # job external ids, in order
        self.statuses: dict[int, int] = {}
        self.missing_retry_after = 0

    def run(self) -> None:
        session = requests.Session()
        cid = self.account.connection_id
        while not self.stop.is_set():
            batch = [
                job_event(cid, f"j-{uuid.uuid4()}", "queued", event_id=str(uuid.uuid4()))
                for _ in range(BATCH)
            ]
            for event in batch:
                event["connectionId"] = cid
            while True:
                try:
                    response = session.post(
                        self.base_url + "/api/ingest",
                        json={"events": batch},
                        headers={"Authorization": f"Bearer {self.account.api_key}"},
                        timeout=15,
                    )
                except requests.RequestException:
                    time.sleep(0.05)
                    continue
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    self.acknowledged += [e["job"]["externalId"] for e in batch]
                    break
                if response.status_code != 503:
                    return  # reported by the test
                if "Retry-After" not in response.headers:
                    self.missing_retry_after += 1
                time.sleep(0.05)


class Consumer(threading.Thread):
    """Reads one connection's stream, reconnecting with Last-Event-ID if it ends."""

    def __init__(self, base_url: str, account) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.account = account
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.received: list[str] = []
        self.reconnects = 0

    def run(self) -> None:
        last_id = None
        while not self.stop.is_set():
            try:
                with open_stream(
                    self.base_url,
                    self.account.connection_id,
                    api_key=self.account.api_key,
                    last_event_id=last_id,
                ) as stream:
                    stream.read_bytes(1)
                    self.ready.set()
                    while not self.stop.is_set():
                        # Heartbeats come every second: 5 s of silence is a failure.
                        event = stream.next_event(timeout=5)
                        if event.event == "job:state_change":
                            self.received.append(event.json()["externalId"])
                            last_id = event.id
            except (ConnectionError, OSError, AssertionError):  # TimeoutError too
                pass
            if not self.stop.is_set():
                self.reconnects += 1
                time.sleep(0.1)


def test_failover_of_every_primary_under_load_loses_nothing_acknowledged(
    start_server, local_cluster, redis_url
):
    # The safety-net sweep is a minute away: what arrives within seconds after a
    # failover came through notifications moved to the slot's new owner.
    server = start_server(WEB_CONCURRENCY="2", SLUICE_READ_BLOCK_MS="60000")
    accounts = accounts_on_every_primary(redis_url, CONNECTIONS_PER_PRIMARY)
    consumers = [Consumer(server.url, a) for a in accounts]
    for consumer in consumers:
        consumer.start()
    for consumer in consumers:
        assert consumer.ready.wait(10), "a stream did not open"
    producers = [Producer(server.url, a) for a in accounts]
    for producer in producers:
        producer.start()
    try:
        wait_until(lambda: all(len(p.acknowledged) >= 20 for p in producers), 20, "traffic")
        for primary in local_cluster.masters():
            replica = local_cluster.replica_of(primary)
            before = [len(p.acknowledged) for p in producers]
            local_cluster.failover(replica)
            # Traffic goes on after each handover, on every connection.
            wait_until(
                lambda before=before: all(
                    len(p.acknowledged) >= b + 20 for p, b in zip(producers, before, strict=True)
                ),
                30,
                "ingest after a failover",
            )
    finally:
        for producer in producers:
            producer.stop.set()
        for producer in producers:
            producer.join(30)
    for producer in producers:
        assert set(producer.statuses) <= {202, 503}, producer.statuses
        assert producer.missing_retry_after == 0
    for producer, consumer in zip(producers, consumers, strict=True):
        wait_until(
            lambda p=producer, c=consumer: len(c.received) >= len(p.acknowledged),
            10,
            "every acknowledged event on its stream",
        )
    for consumer in consumers:
        consumer.stop.set()
    for producer, consumer in zip(producers, consumers, strict=True):
        consumer.join(5)
        # Exactly once, in the order acknowledged (retried batches deduplicated).
        assert consumer.received == producer.acknowledged
        assert consumer.reconnects == 0
