"""The near cache on real Redis servers: coherent with writes made through another client, the
fill race closed by design, and under faults of its tracking connection (killed, FLUSHALL, an
ACL that refuses tracking, Redis restarted, Redis SIGSTOPped) never stale: flushed and bypassed
until tracking is back, then used again.

The shared Redis serves the tests that flush or stop nothing; the others start a Redis of their
own (`postal_testing.redis_servers`), and the replica test a primary with two replicas.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace

import redis as sync_redis
import redis.asyncio as redis

from postal.cache import CacheClient, CacheTimeouts, Guarded, GuardedKey, NearCache, ReadThrough
from postal_testing.redis_servers import RedisServer
from postal_testing.topologies import ReplicaSet
from tests.integration.helpers import small_profile
from tests.integration.near_sides import (
    DEAD_AFTER,
    HEARTBEAT,
    KEY,
    eventually,
    never_loaded,
    served_from_memory,
    side,
)


async def test_writes_through_another_client_are_never_read_stale(
    redis_url: str, key_prefix: str
) -> None:
    async with side(redis_url, key_prefix) as reader, side(redis_url, key_prefix) as writer:
        await eventually(lambda: reader.near.usable() and writer.near.usable())
        await writer.write(b"v0")
        assert await served_from_memory(reader) == b"v0"
        for version in range(1, 301):
            await writer.write(b"v%d" % version)
            assert await reader.read() == b"v%d" % version
            assert await reader.read() == b"v%d" % version
        stats = reader.near.stats()
        # Each second read came from memory, unless the first one's reply was refused a place
        # there because the writer's last push came in while it was being read (that is the
        # fill-race rule at work, not a miss of the near cache).
        assert stats.hits + stats.stale_rejected >= 300
        assert stats.hits >= 150
        assert stats.invalidations >= 300


async def test_a_process_never_reads_its_own_write_stale(redis_url: str, key_prefix: str) -> None:
    async with side(redis_url, key_prefix) as one:
        await eventually(one.near.usable)
        await one.write(b"v0")
        assert await served_from_memory(one) == b"v0"
        for version in range(1, 101):
            # Through the invalidator, as the service writes: evicted here before it returns.
            new = b"v%d" % version

            async def invalidate_and_fill(payload: bytes = new) -> bool:
                (generation,) = await one.cache.invalidate_many([KEY])
                return await one.cache.fill_guarded(KEY, generation, payload, ttl=60)

            assert await one.invalidator.invalidate_with([KEY], (), invalidate_and_fill)
            assert await one.read() == new


async def test_invalidations_still_unread_on_the_socket_are_applied_before_a_hit(
    redis_url: str, key_prefix: str
) -> None:
    """A write that returned before this process's loop read its invalidation: the hit that
    follows at once must not serve what it replaced, and the near cache stays usable."""
    async with side(redis_url, key_prefix) as reader, side(redis_url, key_prefix) as writer:
        await eventually(reader.near.usable)
        await writer.write(b"v0")
        for version in range(1, 51):
            assert await served_from_memory(reader) == b"v%d" % (version - 1)
            await asyncio.sleep(0)  # a new turn of the loop: its first `catch_up` is to come
            # A blocking client on this thread: the loop reads nothing while the write is made
            # and while its push arrives, so the push waits unread in the socket's buffer, as
            # one that came after the loop's poll read a request and before its task ran.
            with sync_redis.Redis.from_url(redis_url) as blocking:
                blocking.incr(reader.cache.key(KEY.generation_key))
                time.sleep(0.005)  # noqa: ASYNC251 - blocking the loop is the point
            invalidations = reader.near.stats().invalidations
            assert reader.near.usable()  # read and applied now, not skipped
            assert reader.near.stats().invalidations == invalidations + 1
            assert reader.near.get(KEY.key) is None
            await writer.write(b"v%d" % version)


class HeldReads(CacheClient):
    """Holds a guarded read's reply, once it is in, until `release` is set: a reply that
    arrives before an invalidation but is handled after it, made certain."""

    hold: asyncio.Event | None = None
    release: asyncio.Event | None = None

    async def get_guarded(self, key: GuardedKey, **kwargs: object) -> Guarded:
        found = await super().get_guarded(key)
        if self.hold is not None and self.release is not None:
            self.hold.set()
            await self.release.wait()
        return found


async def test_a_reply_older_than_an_invalidation_is_not_stored(
    redis_url: str, key_prefix: str
) -> None:
    cache = HeldReads.create(read_url=redis_url, profile=small_profile(), key_prefix=key_prefix)
    async with cache, side(redis_url, key_prefix, near_cache=False) as writer:
        near = NearCache(key_prefix=cache.key(""), max_bytes=1 << 20, ttl=30)
        near.tracking = cache.tracking(near, heartbeat=HEARTBEAT, dead_after=DEAD_AFTER)
        assert near.tracking is not None
        near.tracking.start()
        try:
            reads = ReadThrough(cache, near=near)
            await eventually(near.usable)
            await writer.write(b"old")
            cache.hold, cache.release = asyncio.Event(), asyncio.Event()
            read = asyncio.ensure_future(reads.get(KEY, never_loaded))
            await cache.hold.wait()  # the reply holds "old"; now the write lands and is pushed
            invalidations = near.stats().invalidations
            await writer.write(b"new")
            await eventually(lambda: near.stats().invalidations > invalidations)
            cache.release.set()
            assert await read == b"old"  # it began before the write: fine to answer it
            cache.hold = cache.release = None
            assert near.stats().stale_rejected == 1
            assert near.stats().entries == 0  # but never stored for the next reader
            assert await reads.get(KEY, never_loaded) == b"new"
        finally:
            await near.tracking.aclose()


async def test_a_killed_tracking_connection_flushes_bypasses_and_comes_back(
    redis_url: str, key_prefix: str
) -> None:
    async with side(redis_url, key_prefix) as reader, side(redis_url, key_prefix) as writer:
        await eventually(reader.near.usable)
        await writer.write(b"v1")
        assert await served_from_memory(reader) == b"v1"
        (node,) = reader.near.tracking.nodes  # type: ignore[union-attr]
        flushes = reader.near.stats().flushes
        admin = redis.Redis.from_url(redis_url)
        try:
            assert await admin.execute_command("CLIENT", "KILL", "ID", node.client_id) == 1
        finally:
            await admin.aclose()
        await eventually(lambda: reader.near.stats().flushes > flushes)
        assert reader.near.stats().entries == 0
        await writer.write(b"v2")  # whatever tracking missed meanwhile
        assert await reader.read() == b"v2"
        await eventually(reader.near.usable)  # dialled again, confirmed
        assert node.connects == 2
        assert await served_from_memory(reader) == b"v2"


async def test_flushall_empties_the_near_cache(own_redis: RedisServer) -> None:
    async with side(own_redis.url, "t:") as reader, side(own_redis.url, "t:") as writer:
        await eventually(reader.near.usable)
        await writer.write(b"v1")
        assert await served_from_memory(reader) == b"v1"
        admin = redis.Redis.from_url(own_redis.url)
        try:
            await admin.flushall()
            await writer.write(b"after the flush")
        finally:
            await admin.aclose()
        assert await reader.read() == b"after the flush"
        assert reader.near.stats().flushes >= 2  # confirmed, then FLUSHALL


async def test_tracking_refused_by_an_acl_leaves_the_near_cache_unused(
    own_redis: RedisServer,
) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "+@all", "-client|tracking"
        )
    finally:
        await admin.aclose()
    host, port = own_redis.address
    url = f"redis://reader:reader-pw@{host}:{port}/0"
    async with side(url, "t:") as reader, side(own_redis.url, "t:") as writer:
        await writer.write(b"v1")
        await asyncio.sleep(DEAD_AFTER * 2)  # time to dial, be refused and dial again
        assert not reader.near.usable()
        for version in range(2, 12):
            await writer.write(b"v%d" % version)
            assert await reader.read() == b"v%d" % version
        assert reader.near.stats().entries == 0
        assert reader.near.stats().hits == 0


async def test_a_restarted_redis_flushes_and_tracking_resumes(own_redis: RedisServer) -> None:
    async with side(own_redis.url, "t:") as reader:
        await eventually(reader.near.usable)
        await reader.write(b"v1")
        assert await served_from_memory(reader) == b"v1"
        own_redis.restart()  # empty: its generation counters start again from nothing
        await eventually(lambda: reader.near.stats().entries == 0)
        await eventually(reader.near.usable)
        await reader.write(b"after the restart")
        assert await reader.read() == b"after the restart"


async def test_a_stopped_redis_makes_the_near_cache_unusable_until_it_answers_again(
    own_redis: RedisServer,
) -> None:
    async with side(own_redis.url, "t:") as reader:
        await eventually(reader.near.usable)
        await reader.write(b"v1")
        assert await served_from_memory(reader) == b"v1"
        pid = own_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # No PONG within DEAD_AFTER: bypassed, then the connection is dropped and flushed.
            await eventually(lambda: not reader.near.usable(), timeout=DEAD_AFTER * 3)
            await eventually(lambda: reader.near.stats().entries == 0, timeout=DEAD_AFTER * 4)
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(reader.near.usable)
        assert await served_from_memory(reader) == b"v1"


async def test_on_replicas_writes_through_the_primary_are_never_read_stale() -> None:
    """Reads from two replicas, writes to their primary (each invalidation waits for both):
    tracking runs on each replica, which pushes the invalidations it applies."""
    truth = {"payload": b"v0"}  # what the database holds

    async def load() -> tuple[bytes, float]:
        return truth["payload"], 60.0

    with ReplicaSet(replicas=2) as replicas:
        urls = {"read_url": replicas.read_url, "write_url": replicas.write_url}
        reader = CacheClient.create(**urls, profile=small_profile(), key_prefix="r:")
        # A SET deadline long enough for each WAIT on a busy machine: this test is about reads.
        patient = replace(small_profile(), timeouts=CacheTimeouts(get=0.1, set=2.0))
        writer = CacheClient.create(**urls, profile=patient, key_prefix="r:")
        async with reader, writer:
            near = NearCache(key_prefix=reader.key(""), max_bytes=1 << 20, ttl=30)
            near.tracking = reader.tracking(near, heartbeat=HEARTBEAT, dead_after=DEAD_AFTER)
            assert near.tracking is not None
            assert len(near.tracking.nodes) == 2  # one tracking connection per replica
            near.tracking.start()
            try:
                reads = ReadThrough(reader, near=near)
                await eventually(near.usable)
                # Until the primary lists the replicas online, reads do not go to them.
                await eventually(lambda: reader.breaker_state("read").name == "CLOSED")
                for version in range(1, 201):
                    truth["payload"] = b"v%d" % version  # committed; now invalidate and fill
                    (generation,) = await writer.invalidate_many([KEY])
                    await writer.fill_guarded(KEY, generation, truth["payload"], ttl=60)
                    for _ in range(3):
                        assert await reads.get(KEY, load) == truth["payload"]
                stats = near.stats()
                assert stats.invalidations >= 200
                assert stats.hits > 0  # served from memory in between
            finally:
                await near.tracking.aclose()
