"""The local Redis Cluster of SLUICE_TEST_REDIS=cluster (tests/rediscluster.py) itself."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.conftest import cluster_run
from tests.util import ClusterClient, raw_redis

pytestmark = pytest.mark.skipif(
    not cluster_run(), reason="the local Redis Cluster runs with SLUICE_TEST_REDIS=cluster only"
)


def test_three_masters_with_a_replica_each(local_cluster, redis_is_cluster):
    assert redis_is_cluster
    masters, replicas = local_cluster.masters(), local_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert sorted(n.port for n in masters + replicas) == sorted(local_cluster.ports)
    assert sorted(r.master_id for r in replicas) == sorted(m.id for m in masters)
    slots = sorted(r for m in masters for r in m.slots)
    assert slots[0][0] == 0 and slots[-1][1] == 16383
    # The first master at start (a failover since may have made it a replica).
    assert local_cluster.url in {f"redis://127.0.0.1:{port}/0" for port in local_cluster.ports}


def test_keys_in_every_slot_range_are_reachable(local_cluster, redis_client):
    """Keys spread over all three masters, through one cluster client; each one
    really lives on the master that serves its slot."""
    assert isinstance(redis_client, redis.RedisCluster)
    keys = [f"sluice-test:{uuid.uuid4()}" for _ in range(60)]
    owners = {}
    for key in keys:
        redis_client.set(key, key, ex=60)
        owners[key] = redis_client.get_node_from_key(key).port
    assert set(owners.values()) == {m.port for m in local_cluster.masters()}
    assert [redis_client.get(key) for key in keys] == keys
    for key, port in owners.items():
        assert local_cluster.client(port).get(key) == key
    redis_client.delete(*keys)


def test_client_list_and_kill_span_the_nodes(local_cluster, redis_url):
    """ClusterClient lists the clients of every node and kills one on its node."""
    client = raw_redis(redis_url, decode_responses=True)
    assert isinstance(client, ClusterClient)
    name = f"probe-{uuid.uuid4().hex[:8]}"
    probes = [local_cluster.client(port) for port in local_cluster.ports]
    try:
        for probe in probes:
            probe.client_setname(name)
        mine = [c for c in client.client_list() if c.get("name") == name]
        assert sorted(c["node"] for c in mine) == sorted(
            f"127.0.0.1:{port}" for port in local_cluster.ports
        )
        assert client.client_kill_filter(_id=mine[0]["id"]) == 1
        left = [c for c in client.client_list() if c.get("name") == name]
        assert len(left) == len(mine) - 1 and mine[0]["node"] not in {c["node"] for c in left}
    finally:
        for probe in probes:
            probe.close()
        client.close()


def test_failover_promotes_the_replica_and_the_cluster_stays_ok(local_cluster, redis_client):
    """CLUSTER FAILOVER on a replica: it serves its master's slots, the data is
    there, and the cluster is ok; failing back restores the starting layout."""
    master = local_cluster.masters()[0]
    replica = next(r for r in local_cluster.replicas() if r.master_id == master.id)
    key = next(
        k
        for k in (f"sluice-test:{uuid.uuid4()}" for _ in range(1000))
        if redis_client.get_node_from_key(k).port == master.port
    )
    redis_client.set(key, "before", ex=60)
    try:
        promoted = local_cluster.failover(replica.port)
        assert promoted.role == "master" and promoted.slots == master.slots
        roles = {n.port: n for n in local_cluster.nodes()}
        assert roles[master.port].role == "replica"
        assert roles[master.port].master_id == promoted.id
        assert local_cluster.settled()
        assert local_cluster.client(replica.port).get(key) == "before"
        # The cluster client follows the MOVED redirection to the new master.
        redis_client.set(key, "after", ex=60)
        assert local_cluster.client(replica.port).get(key) == "after"
    finally:
        local_cluster.failover(master.port)  # back as it was, for the tests that follow
    assert [m.port for m in local_cluster.masters()][0] == master.port
    assert redis_client.get(key) == "after"
    redis_client.delete(key)
