"""The Redis Cluster test infrastructure works: tests/redis_cluster.py.

One cluster (3 masters, one replica each) for the module: redis-py's cluster client reaches
every master, a write acknowledged by a replica (``WAIT``) survives its master's SIGKILL,
the killed master's slots take writes again once its replica is promoted, and the killed
node comes back as a replica.
"""

import pytest
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from tests.redis_cluster import Cluster, keys_on_every_slot

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster():
    started = Cluster().start()
    yield started
    started.stop()


@pytest.fixture
def client(cluster):
    connected = cluster.client()
    yield connected
    connected.close()


def test_the_cluster_client_sees_three_masters_with_a_replica_each(cluster, client):
    masters = {node.port for node in client.get_primaries()}
    assert masters == {server.port for server in cluster.masters()}
    assert len(masters) == 3
    assert len(client.get_replicas()) == 3
    for master in cluster.masters():
        assert len(cluster.replicas(master)) == 1


def test_writes_on_every_slot_survive_a_master_killed_after_wait(cluster, client):
    keys = keys_on_every_slot("infra")
    assert len({key_slot(k.encode()) for k in keys}) == REDIS_CLUSTER_HASH_SLOTS
    # The {tag} keys spread over all three masters.
    assert {client.get_node_from_key(k).port for k in keys} == {s.port for s in cluster.masters()}
    pipe = client.pipeline()
    for key in keys:
        pipe.set(key, f"before:{key}")
    assert all(pipe.execute())
    # Every master has its replica acknowledge what it took (WAIT 1, on each master).
    acked = client.execute_command("WAIT", 1, 5000, target_nodes=RedisCluster.PRIMARIES)
    assert acked == 3

    victim_key = keys[0]
    dead = cluster.kill_master_of(victim_key)
    heir = cluster.wait_promoted(dead)
    assert heir.port != dead.port
    assert cluster.master_of(victim_key).port == heir.port
    taken_over = cluster.slots_of(heir)
    orphaned = [k for k in keys if key_slot(k.encode()) in taken_over]
    assert len(orphaned) > REDIS_CLUSTER_HASH_SLOTS // 4  # about a third of the slots

    # The client made before the kill finds the new master (its slot table is refreshed).
    assert client.get(victim_key) == f"before:{victim_key}".encode()
    pipe = client.pipeline()
    for key in keys:
        pipe.get(key)
    assert pipe.execute() == [f"before:{k}".encode() for k in keys]
    pipe = client.pipeline()
    for key in orphaned:
        pipe.set(key, f"after:{key}")
    assert all(pipe.execute())
    assert client.mget_nonatomic(orphaned) == [f"after:{k}".encode() for k in orphaned]

    # The killed node comes back empty and follows its successor, in sync.
    cluster.restart(dead)
    assert [s.port for s in cluster.replicas(heir)] == [dead.port]
    assert dead.port not in {s.port for s in cluster.masters()}
    fresh = cluster.client()
    try:
        assert len(fresh.get_replicas()) == 3
        assert fresh.get(orphaned[-1]) == f"after:{orphaned[-1]}".encode()
    finally:
        fresh.close()
