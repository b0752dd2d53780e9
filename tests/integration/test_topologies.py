"""The topology rigs hold what they promise: real replicas that are synced and read-only, Sentinels
that agree on a primary and elect a new one when it dies, a Redis Cluster that serves every slot
and keeps a key readable while its slot moves and while a master fails over; and every rig stops
what it started, also when its start fails half-way."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import redis
import redis.exceptions as redis_exc
from redis.cluster import RedisCluster
from redis.crc import key_slot

from postal_testing.cluster_set import ClusterSet
from postal_testing.redis_servers import RedisServer, answers_ping
from postal_testing.topologies import ReplicaSet, SentinelSet, ask

KEYS_IN_ONE_SLOT = [f"{{topology-test}}:{n}" for n in range(20)]  # one hash tag: one slot


def role(server: RedisServer) -> str:
    return str(ask(server.address, "ROLE")[0])


def is_gone(server: RedisServer) -> bool:
    return not answers_ping(server.host, server.port) and not server.directory.exists()


@contextlib.contextmanager
def cluster_client(cluster: ClusterSet) -> Iterator[RedisCluster]:
    seed = next(node for node in cluster.nodes if node.pid is not None)
    client = RedisCluster(host=seed.host, port=seed.port, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


# -- ReplicaSet -----------------------------------------------------------------------------------


def test_replicas_are_synced_and_read_only() -> None:
    with ReplicaSet(2) as replica_set:
        assert replica_set.read_url == ",".join(r.url for r in replica_set.replicas)
        primary = redis.Redis.from_url(replica_set.write_url)
        try:
            primary.set("greeting", "hello")
            assert primary.wait(2, 5000) == 2  # both replicas acknowledged the write
        finally:
            primary.close()
        for url, replica in zip(replica_set.read_url.split(","), replica_set.replicas, strict=True):
            info = ask(replica.address, "INFO", "replication")
            assert (info["role"], info["master_port"]) == ("slave", replica_set.primary.port)
            assert info["master_link_status"] == "up"
            client = redis.Redis.from_url(url)
            try:
                assert client.get("greeting") == b"hello"
                with pytest.raises(redis_exc.ReadOnlyError):
                    client.set("greeting", "written to a replica")
            finally:
                client.close()
    assert all(is_gone(server) for server in [replica_set.primary, *replica_set.replicas])


def test_a_start_that_fails_half_way_stops_what_it_started() -> None:
    replica_set = ReplicaSet(2)
    last = replica_set.replicas[-1]
    # Take the last replica's port first: its redis-server cannot bind and exits.
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((last.host, last.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="exited at start"):
            replica_set.start()
    started = [replica_set.primary, *replica_set.replicas[:-1]]
    assert all(is_gone(server) for server in [*started, last])


# -- SentinelSet ----------------------------------------------------------------------------------


def test_sentinels_agree_on_the_primary_and_know_each_other() -> None:
    with SentinelSet(sentinels=3, replicas=1) as sentinels:
        primary, replica = sentinels.servers
        ports = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinels.sentinels)
        assert sentinels.url == f"redis+sentinel://{ports}/postal"
        assert sentinels.reported_masters() == [primary.address] * 3
        assert sentinels.master_address() == primary.address
        for address in sentinels.sentinel_addresses:
            replicas = ask(address, "SENTINEL", "REPLICAS", "postal")
            assert [(r["ip"], int(r["port"])) for r in replicas] == [replica.address]
            assert len(ask(address, "SENTINEL", "SENTINELS", "postal")) == 2
    assert all(is_gone(server) for server in [*sentinels.servers, *sentinels.sentinels])


def test_a_killed_primary_is_replaced_and_rejoins_as_a_replica() -> None:
    with SentinelSet(sentinels=3, replicas=1) as sentinels:
        old_address = sentinels.master_address()
        killed = sentinels.kill_primary()
        assert killed.address == old_address
        assert not answers_ping(killed.host, killed.port)

        new_address = sentinels.wait_for_failover(old_address)

        new_primary = sentinels.server_at(new_address)
        assert new_primary is sentinels.servers[1]  # the only replica
        assert sentinels.reported_masters() == [new_address] * 3
        assert role(new_primary) == "master"
        assert ask(new_address, "SET", "after-failover", "written") is True

        sentinels.rejoin(killed)

        info = ask(killed.address, "INFO", "replication")
        assert (info["role"], info["master_port"]) == ("slave", new_primary.port)
        assert sentinels.master_address() == new_address


# -- ClusterSet -----------------------------------------------------------------------------------


def test_cluster_serves_every_slot_and_a_key_round_trips() -> None:
    with ClusterSet(masters=3) as cluster:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
        assert cluster.url == f"redis+cluster://{hosts}"
        for node in cluster.nodes:
            assert "cluster_state:ok" in ask(node.address, "CLUSTER", "INFO")
        masters = cluster.masters()
        assert sorted(m.port for m in masters) == sorted(n.port for n in cluster.nodes)
        served = sum(
            last - first + 1
            for entry in cluster.cluster_nodes()
            for first, last in entry.slot_ranges
        )
        assert served == 16384
        with cluster_client(cluster) as client:
            client.set("round-trip", "value")
            assert client.get("round-trip") == "value"
        owner = cluster.node_for_slot(key_slot(b"round-trip"))
        assert ask(owner.address, "GET", "round-trip") == "value"
    assert all(is_gone(node) for node in cluster.nodes)


def test_migrate_slot_moves_the_keys_and_they_stay_readable() -> None:
    slot = key_slot(KEYS_IN_ONE_SLOT[0].encode())
    with ClusterSet(masters=3) as cluster, cluster_client(cluster) as client:
        for key in KEYS_IN_ONE_SLOT:
            client.set(key, key.upper())
        source = cluster.node_for_slot(slot)
        target = next(master for master in cluster.masters() if master is not source)

        moved = cluster.migrate_slot(slot, target, pause_between_keys=0.001)  # key by key

        assert moved == len(KEYS_IN_ONE_SLOT)
        assert cluster.node_for_slot(slot) is target
        assert ask(source.address, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert ask(target.address, "CLUSTER", "COUNTKEYSINSLOT", slot) == len(KEYS_IN_ONE_SLOT)
        # The client still maps the slot to the source: it follows the MOVED redirection.
        assert [client.get(key) for key in KEYS_IN_ONE_SLOT] == [
            key.upper() for key in KEYS_IN_ONE_SLOT
        ]


def test_a_half_moved_slot_redirects_with_ask_and_every_key_stays_readable() -> None:
    slot = key_slot(KEYS_IN_ONE_SLOT[0].encode())
    with ClusterSet(masters=3) as cluster, cluster_client(cluster) as client:
        for key in KEYS_IN_ONE_SLOT:
            client.set(key, key.upper())
        source = cluster.node_for_slot(slot)
        target = next(master for master in cluster.masters() if master is not source)

        assert cluster.begin_migration(slot, target) is source
        assert cluster.move_keys(slot, target, limit=5) == 5

        assert cluster.node_for_slot(slot) is source  # still the owner, mid-migration
        left = ask(source.address, "CLUSTER", "COUNTKEYSINSLOT", slot)
        assert left == len(KEYS_IN_ONE_SLOT) - 5
        (moved_key,) = ask(target.address, "CLUSTER", "GETKEYSINSLOT", slot, 1)
        with pytest.raises(redis_exc.AskError):
            ask(source.address, "GET", moved_key)
        assert [client.get(key) for key in KEYS_IN_ONE_SLOT] == [
            key.upper() for key in KEYS_IN_ONE_SLOT
        ]

        assert cluster.move_keys(slot, target) == left
        cluster.finish_migration(slot, target)
        assert cluster.node_for_slot(slot) is target
        assert client.get(moved_key) == moved_key.upper()


def test_fail_over_promotes_a_replica_of_the_master() -> None:
    with ClusterSet(masters=3, replicas_per_master=1) as cluster, cluster_client(cluster) as client:
        client.set("failing-over", "kept")
        master = cluster.node_for_slot(key_slot(b"failing-over"))
        (replica,) = cluster.replicas_of(master)

        promoted = cluster.fail_over(master)

        assert promoted is replica
        assert role(promoted) == "master"
        assert role(master) == "slave"  # the old master now follows its replica
        assert cluster.node_for_slot(key_slot(b"failing-over")) is promoted
        assert client.get("failing-over") == "kept"
        client.set("failing-over", "written after")
        assert ask(promoted.address, "GET", "failing-over") == "written after"


def test_a_killed_master_is_replaced_by_its_replica() -> None:
    with ClusterSet(masters=3, replicas_per_master=1) as cluster:
        master = cluster.node_for_slot(key_slot(b"surviving"))
        (replica,) = cluster.replicas_of(master)
        assert ask(master.address, "SET", "surviving", "kept") is True
        assert ask(master.address, "WAIT", 1, 5000) == 1  # the replica has the key

        cluster.kill_master(master)
        promoted = cluster.wait_for_promotion(master)

        assert promoted is replica
        assert master not in cluster.masters()
        assert cluster.node_for_slot(key_slot(b"surviving")) is promoted
        with cluster_client(cluster) as client:
            assert client.get("surviving") == "kept"
