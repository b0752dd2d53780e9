"""The near cache on a Redis Cluster of three masters: tracking on every master the slot table
names, followed as the table changes.

Invalidations from another client reach it for keys on each master; a killed tracking connection
on one master flushes it and keeps it bypassed until that master's tracking is back; writes
through another client are never read stale. And as masters come and go: a slot migrated to a
master that joined the cluster (its reads, through ASK, cached only once it is tracked), a manual
failover (the demoted master, still up, no longer counts as live), a master killed (flushed,
bypassed until its promoted replica is tracked).

The shared session cluster serves the tests that change nothing; the others start their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from postal.cache import CacheUnavailable, FollowingTracking, GuardedKey, guarded
from postal_testing.cluster_set import ClusterSet
from postal_testing.redis_servers import RedisServer
from postal_testing.topologies import ask
from tests.integration.near_sides import Side, eventually, served_from_memory, side

ROUNDS = 300


def key_on(cluster: ClusterSet, prefix: str, master: RedisServer, after: int = 0) -> GuardedKey:
    """A post's guarded key (with `prefix`, as the client sends it) whose slot `master` serves:
    its value and generation share that slot through the hash tag."""
    for number in range(after + 1, after + 10_000):
        if cluster.node_for_slot(key_slot(str(number).encode())) is master:
            return guarded("post", str(number))
    raise LookupError(f"no key found on the master on port {master.port}")


def loaded(payload: bytes) -> Callable[[], Awaitable[tuple[bytes, float]]]:
    """A database load that returns `payload`."""

    async def load() -> tuple[bytes, float]:
        return payload, 60.0

    return load


def one_key_per_master(cluster: ClusterSet, prefix: str) -> list[GuardedKey]:
    return [key_on(cluster, prefix, master) for master in cluster.masters()]


def following(reader: Side) -> FollowingTracking:
    tracking = reader.near.tracking
    assert isinstance(tracking, FollowingTracking)  # a cluster's tracking follows its masters
    return tracking


def tracked(reader: Side) -> set[str]:
    return {node.node.name for node in following(reader).nodes}


def names(servers: list[RedisServer]) -> set[str]:
    return {f"{server.host}:{server.port}" for server in servers}


async def write_once_the_writer_finds_the_master(
    writer: Side, payload: bytes, key: GuardedKey
) -> None:
    """The writer's own slot table may still name a killed master (it is read again at most
    once a second after a failure): its write is tried again until it lands, as the service's
    invalidator retries."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await writer.write(payload, key)
            return
        except CacheUnavailable:
            assert time.monotonic() < deadline, "the writer never found the key's master"
            await asyncio.sleep(0.1)


@pytest.fixture
def own_cluster() -> Iterator[ClusterSet]:
    with ClusterSet(masters=3) as cluster:
        yield cluster


@pytest.fixture
async def plain_client(redis_cluster: ClusterSet) -> AsyncIterator[redis.RedisCluster]:
    """Another client altogether: redis-py's cluster client, not Postal."""
    host, port = redis_cluster.masters()[0].address
    client = redis.RedisCluster(host=host, port=port)
    try:
        yield client
    finally:
        await client.aclose()


async def test_invalidations_for_keys_on_each_master_reach_the_near_cache(
    redis_cluster: ClusterSet, key_prefix: str, plain_client: redis.RedisCluster
) -> None:
    keys = one_key_per_master(redis_cluster, key_prefix)
    async with side(redis_cluster.url, key_prefix) as reader:
        await eventually(reader.near.usable)
        assert tracked(reader) == names(redis_cluster.masters())
        for key in keys:
            await reader.write(b"v0", key)
            assert await served_from_memory(reader, key) == b"v0"
        assert reader.near.stats().entries == 3
        for index, key in enumerate(keys):
            # Bump the generation as a writer does, on this key's master, from outside Postal.
            await plain_client.incr(key_prefix + key.generation_key)
            await eventually(lambda left=2 - index: reader.near.stats().entries == left)
            assert reader.near.get(key.key) is None  # this key's entry, not another's
        assert reader.near.stats().invalidations >= 3


async def test_writes_through_another_client_are_never_read_stale(
    redis_cluster: ClusterSet, key_prefix: str
) -> None:
    keys = one_key_per_master(redis_cluster, key_prefix)
    url = redis_cluster.url
    async with side(url, key_prefix) as reader, side(url, key_prefix) as writer:
        await eventually(lambda: reader.near.usable() and writer.near.usable())
        for key in keys:
            await writer.write(b"v0", key)
            assert await served_from_memory(reader, key) == b"v0"
        for version in range(1, ROUNDS + 1):
            key = keys[version % len(keys)]  # each master in turn
            await writer.write(b"v%d" % version, key)
            assert await reader.read(key) == b"v%d" % version
            assert await reader.read(key) == b"v%d" % version
        stats = reader.near.stats()
        assert stats.hits >= ROUNDS  # each second read came from memory
        assert stats.invalidations >= ROUNDS


async def test_a_killed_tracking_connection_on_one_master_flushes_and_bypasses_until_back(
    own_cluster: ClusterSet,
) -> None:
    """The tracking connection to one master is killed, and that master refuses tracking until
    the test allows it again: meanwhile nothing is served from memory, for any master's keys."""
    keys = one_key_per_master(own_cluster, "t:")
    victim = own_cluster.masters()[1]
    async with side(own_cluster.url, "t:") as reader, side(own_cluster.url, "t:") as writer:
        await eventually(reader.near.usable)
        for key in keys:
            await writer.write(b"v1", key)
            assert await served_from_memory(reader, key) == b"v1"
        (node,) = [n for n in following(reader).nodes if n.node.name in names([victim])]
        flushes = reader.near.stats().flushes
        ask(victim.address, "ACL", "SETUSER", "default", "-client|tracking")
        try:
            assert ask(victim.address, "CLIENT", "KILL", "ID", node.client_id) == 1
            await eventually(lambda: reader.near.stats().flushes > flushes)
            assert reader.near.stats().entries == 0
            assert not reader.near.usable()
            hits, misses = reader.near.stats().hits, reader.near.stats().misses
            for version in range(2, 32):
                key = keys[version % len(keys)]
                await writer.write(b"v%d" % version, key)
                assert await reader.read(key) == b"v%d" % version
                assert await reader.read(key) == b"v%d" % version
            stats = reader.near.stats()
            assert (stats.hits, stats.misses, stats.entries) == (hits, misses, 0)  # bypassed
        finally:
            ask(victim.address, "ACL", "SETUSER", "default", "+client|tracking")
        await eventually(reader.near.usable)  # dialled again, confirmed
        assert node.connects == 2
        for key in keys:
            await writer.write(b"after", key)
            assert await served_from_memory(reader, key) == b"after"


async def test_a_slot_moved_to_a_new_master_is_cached_only_once_it_is_tracked(
    own_cluster: ClusterSet,
) -> None:
    """A fourth master joins; a hot key's slot is migrated to it, held half-moved (reads reach
    the newcomer through ASK), then given to it (MOVED). The reader starts tracking the newcomer
    at its first ASK, stores nothing it read there until that tracking is confirmed, and then
    hears of writes made on it."""
    key = key_on(own_cluster, "t:", own_cluster.masters()[0])
    slot = key_slot(key.key.encode())
    async with side(own_cluster.url, "t:") as reader, side(own_cluster.url, "t:") as writer:
        await eventually(reader.near.usable)
        await writer.write(b"v1", key)
        assert await served_from_memory(reader, key) == b"v1"
        newcomer = await asyncio.to_thread(own_cluster.add_master)
        assert tracked(reader) == names(own_cluster.masters()) - names([newcomer])
        await asyncio.to_thread(own_cluster.begin_migration, slot, newcomer)
        # The value, its generation counter and its slot's epoch (made by the write's bump).
        assert await asyncio.to_thread(own_cluster.move_keys, slot, newcomer) == 3
        assert reader.near.stats().entries == 0  # the source's MIGRATE deleted them: pushed
        changes = following(reader).changes
        stores = reader.near.stats().stores
        assert await reader.read(key) == b"v1"  # through ASK, from the newcomer
        assert following(reader).changes == changes + 1
        assert names([newcomer]) <= tracked(reader)
        assert reader.near.stats().stores == stores  # read before its tracking was confirmed
        await eventually(reader.near.usable)
        assert await served_from_memory(reader, key) == b"v1"
        # A write's invalidation, on the newcomer through ASK (its fill would be refused while
        # the slot is half-moved: TRYAGAIN), pushed from there to the reader.
        await writer.cache.invalidate_many([key])
        await eventually(lambda: reader.near.stats().entries == 0)
        assert await reader.read(key, loaded(b"v2")) == b"v2"  # a miss: the database answers
        await asyncio.to_thread(own_cluster.finish_migration, slot, newcomer)
        await writer.write(b"v3", key)  # MOVED
        assert await reader.read(key) == b"v3"
        await eventually(reader.near.usable)
        assert await served_from_memory(reader, key) == b"v3"
        await writer.write(b"v4", key)
        assert await reader.read(key) == b"v4"
    assert names([newcomer]) <= names(own_cluster.masters())


async def test_a_failed_over_master_is_replaced_in_tracking_before_its_keys_are_served(
    key_prefix: str,
) -> None:
    """Three masters with a replica each. A manual failover: the old master stays up as a
    replica, its tracking connection open, yet stops counting as live (ROLE), the slot table is
    read again, and the promoted replica is tracked in its place, with no read to set it off.
    Then a master is killed: flushed, bypassed until the slot table names its promoted replica
    and that replica is tracked. No read after a write is stale at any step."""
    truth: dict[str, bytes] = {}

    with ClusterSet(masters=3, replicas_per_master=1) as cluster:
        keys = one_key_per_master(cluster, "f:")
        async with side(cluster.url, "f:") as reader, side(cluster.url, "f:") as writer:

            async def check(version: int) -> None:
                """Write every key through the writer, then read each through the reader."""
                for key in keys:
                    truth[key.key] = b"v%d" % version
                    await write_once_the_writer_finds_the_master(writer, truth[key.key], key)
                for key in keys:
                    assert await reader.read(key, loaded(truth[key.key])) == truth[key.key]

            await eventually(reader.near.usable)
            await check(1)
            for key in keys:
                assert await served_from_memory(reader, key) == b"v1"

            planned = cluster.node_for_slot(key_slot(keys[0].key.encode()))
            changes = following(reader).changes
            promoted = await asyncio.to_thread(cluster.fail_over, planned)
            # Nothing is read meanwhile: only ROLE can tell the reader its master was demoted
            # (and then the slot table is read again).
            await eventually(lambda: tracked(reader) == names(cluster.masters()))
            assert names([promoted]) <= tracked(reader)
            assert not names([planned]) & tracked(reader)
            assert following(reader).changes > changes
            await eventually(reader.near.usable)
            await check(2)
            for key in keys:
                assert await served_from_memory(reader, key) == b"v2"
            await check(3)

            victim = cluster.node_for_slot(key_slot(keys[1].key.encode()))
            flushes = reader.near.stats().flushes
            await asyncio.to_thread(cluster.kill_master, victim)
            await eventually(lambda: reader.near.stats().flushes > flushes)
            assert not reader.near.usable()
            successor = await asyncio.to_thread(cluster.wait_for_promotion, victim)
            await eventually(lambda: tracked(reader) == names(cluster.masters()), timeout=10)
            assert names([successor]) <= tracked(reader)
            await eventually(reader.near.usable)
            await check(4)
            for key in keys:
                assert await served_from_memory(reader, key) == b"v4"
