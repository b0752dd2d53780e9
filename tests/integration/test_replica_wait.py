"""Invalidations wait for the replicas the reads go to: a real primary, a real replica, and a
proxy on the replication link that makes the replica lag on purpose.

The replica replicates through a FaultProxy that delays each chunk 50 ms, so a write reaches it
about 50 ms after the primary took it. A read of the replica right after an invalidation then
tells whether the invalidation waited: with the wait it always sees the new generation; without
it (the counter-proof, same set-up) it sees the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as redis

from postal.cache import BreakerState, CacheClient, CacheError, CacheTimeouts, Invalidator, guarded
from postal.cache.transport.replicas import ASK_TIMEOUT, ReplicasBehind
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import RedisServer
from tests.integration.helpers import eventually, small_profile

pytestmark = pytest.mark.redis_server

LAG = 0.05  # seconds the replication link delays each chunk, one way
ROUNDS = 20
KEY = guarded("doc", "1")


@dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer
    link: FaultProxy  # the replica's connection to the primary goes through it


@pytest.fixture
async def pair(two_servers: tuple[RedisServer, RedisServer]) -> AsyncIterator[Pair]:
    primary, replica = two_servers
    async with FaultProxy(primary.port) as link:
        # In a thread: the proxy forwarding the sync runs on this event loop.
        await asyncio.to_thread(replica.replicate, primary, via_port=link.port)
        await link.add_latency(LAG)
        yield Pair(primary, replica, link)


def client_for(
    pair: Pair, key_prefix: str, *, wait: bool, set_deadline: float = 1.0
) -> CacheClient:
    profile = replace(
        small_profile(),
        timeouts=CacheTimeouts(get=1.0, set=set_deadline),
        wait_for_replicas=wait,
    )
    return CacheClient.create(
        read_url=pair.replica.url, write_url=pair.primary.url, profile=profile,
        key_prefix=key_prefix,
    )  # fmt: skip


async def stale_reads_after_invalidations(client: CacheClient, replica: RedisServer) -> int:
    """Invalidate, then at once read the generation from the replica: how often it was old.

    The counter is made first and waited for on the replica: a read that finds no counter asks
    the primary for it (see `GuardedOps.get`), which would hide the lag being measured."""
    await client.invalidate([KEY])
    counter = client.key(KEY.generation_key)
    async with redis.Redis.from_url(replica.url) as raw, asyncio.timeout(5.0):
        while not await raw.exists(counter):  # noqa: ASYNC110 - polling another server
            await asyncio.sleep(0.01)
    stale = 0
    for _ in range(ROUNDS):
        before = (await client.get_guarded(KEY)).generation
        await client.invalidate([KEY])
        after = (await client.get_guarded(KEY)).generation
        stale += after <= before
    return stale


async def test_an_invalidation_returns_only_once_the_replica_has_applied_it(
    pair: Pair, key_prefix: str
) -> None:
    # A deadline no stall of a busy test machine reaches: this is about order, not time.
    async with client_for(pair, key_prefix, wait=True, set_deadline=5.0) as client:
        assert await stale_reads_after_invalidations(client, pair.replica) == 0
        waits = client.replica_wait.stats()
    assert waits.replicas == 1
    assert waits.confirmed == ROUNDS + 1  # the rounds, and the first bump that made the counter
    assert waits.behind == waits.skipped == 0


async def test_without_the_wait_the_lagging_replica_serves_the_old_generation(
    pair: Pair, key_prefix: str
) -> None:
    """The counter-proof: the set-up above does catch a replica that has not caught up."""
    async with client_for(pair, key_prefix, wait=False) as client:
        assert await stale_reads_after_invalidations(client, pair.replica) > ROUNDS // 2
        assert client.replica_wait.stats().confirmed == 0


async def test_a_replica_later_than_the_deadline_is_replicas_behind_not_a_breaker_failure(
    pair: Pair, key_prefix: str
) -> None:
    await pair.link.add_latency(0.5)  # each way: far past a 200 ms SET deadline
    async with client_for(pair, key_prefix, wait=True, set_deadline=0.2) as client:
        with pytest.raises(ReplicasBehind, match="0 of 1 replicas confirmed"):
            await client.invalidate([KEY])
        assert client.replica_wait.stats().behind == 1
        # The primary answered, so this is no failure of the write role.
        assert client.breaker_state("write") is BreakerState.CLOSED
        # The primary did take it: the bump created its counter.
        assert await pair_generation(client, pair.primary) > 1_000_000


async def test_a_killed_replica_is_waited_for_once_then_dropped_from_the_count(
    pair: Pair, key_prefix: str
) -> None:
    # The replica's acknowledgement takes two trips over the 50 ms link: a deadline with room
    # for a busy machine (CI once saw it miss a 124 ms WAIT).
    async with client_for(pair, key_prefix, wait=True, set_deadline=1.0) as client:
        for _ in range(5):  # set-up: one WAIT the replica confirms (a busy machine may miss one)
            with contextlib.suppress(ReplicasBehind):
                await client.invalidate([KEY])
                break
        before = client.replica_wait.stats()
        assert before.confirmed == 1
        pair.replica.kill()
        await pair.link.pass_through()
        # The count of 1 is still believed: this WAIT comes back short...
        with pytest.raises(ReplicasBehind):
            await client.invalidate([KEY])
        # ...which makes the next invalidation ask again, and the primary has no replica.
        await eventually_no_replicas(pair.primary)
        await client.invalidate([KEY])
        waits = client.replica_wait.stats()
    assert (waits.confirmed, waits.skipped, waits.replicas) == (1, 1, 0)
    assert waits.behind == before.behind + 1


async def test_the_invalidator_keeps_a_key_pending_while_the_replica_is_behind(
    pair: Pair, key_prefix: str
) -> None:
    """ReplicasBehind is a failed invalidation to the Invalidator: bypassed, then retried
    until the replica confirms."""
    await pair.link.add_latency(0.5)
    async with client_for(pair, key_prefix, wait=True, set_deadline=0.2) as client:
        invalidator = Invalidator(client, give_up_after=30.0, retry_interval=0.05)
        try:
            assert await invalidator.invalidate([KEY]) is False
            assert invalidator.is_pending(KEY)
            await pair.link.pass_through()
            await eventually(lambda: not invalidator.is_pending(KEY), timeout=10)
            assert client.replica_wait.stats().confirmed >= 1
        finally:
            await invalidator.aclose()


async def test_a_question_lost_in_a_black_hole_does_not_hold_up_later_invalidations(
    pair: Pair, key_prefix: str
) -> None:
    """The replica count is asked outside any caller's deadline, bounded by its own timeout:
    one lost in a black hole ends, and the invalidations after the heal go through."""
    async with FaultProxy(pair.primary.port) as front:
        profile = replace(small_profile(), timeouts=CacheTimeouts(get=1.0, set=0.3), breaker=None)
        client = CacheClient.create(
            read_url=pair.replica.url, write_url=front.url, profile=profile,
            key_prefix=key_prefix,
        )  # fmt: skip
        async with client:
            await front.black_hole()
            with pytest.raises(CacheError):
                await client.invalidate([KEY])
            await front.pass_through()
            await pair.link.pass_through()
            async with asyncio.timeout(ASK_TIMEOUT + 5):
                while True:  # until the lost question has timed out and a new one is asked
                    try:
                        await client.invalidate([KEY])
                        break
                    except CacheError:
                        await asyncio.sleep(0.1)
            assert client.replica_wait.stats().confirmed == 1


async def test_the_same_server_for_both_roles_never_waits(redis_url: str, key_prefix: str) -> None:
    client = CacheClient.create(
        read_url=redis_url, write_url=redis_url, profile=small_profile(), key_prefix=key_prefix
    )
    async with client:
        await client.invalidate([KEY])
        assert client.replica_wait.enabled is False
        assert client.replica_wait.stats() == type(client.replica_wait.stats())(0, 0, 0, 0)


async def pair_generation(client: CacheClient, server: RedisServer) -> int:
    direct = CacheClient.create(read_url=server.url, profile=small_profile(), key_prefix="")
    async with direct:
        value = await direct.get(client.key(KEY.generation_key))
    return int(value or 0)


async def eventually_no_replicas(primary: RedisServer) -> None:
    await eventually(lambda: b"connected_slaves:0" in primary.info(b"replication"), timeout=10)
