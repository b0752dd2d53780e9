"""Automatic pipelining of reads (`cache/transport/autopipeline.py`), on real Redis servers.

Counts, not timings: the pipeline's own counters (commands, writes, discarded replies,
connects), Redis's `INFO commandstats` on a server of the test's own, and the errors each
waiter gets. A `FaultProxy` holds commands in flight (latency) or swallows them (black hole).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import cast

import pytest
import redis.asyncio as redis

from postal.cache import (
    USE_DEFAULT,
    CacheClient,
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    PipelineConfig,
    PipelineStats,
    PoolConfig,
    Profile,
)
from postal.cache.transport.autopipeline import DENSE_TURN
from postal.cache.transport.wire import Value, read_call
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import RedisServer

pytestmark = pytest.mark.redis_server

READERS = 50
TEST_TIMEOUT = 20.0  # whole test: a hang fails it instead of blocking the run
# Short socket timeouts, so the stalled-connection watchdog acts within the test.
READ_POOL = PoolConfig(
    max_size=5, min_idle=1, max_idle=2, dial_timeout=0.5, read_timeout=0.5, write_timeout=0.5
)
# For the tests that hold replies on the proxy for a second or more: the stalled-connection
# watchdog (the read timeout) out of their way.
UNWATCHED_POOL = replace(READ_POOL, read_timeout=5.0)
WRITE_POOL = PoolConfig(max_size=2, min_idle=1, max_idle=1)
# The stale-head rule (no read queued behind one this old) reads the real clock: a stall of
# the suite's process in the middle of a gather would send the rest of it to the pool. Out of
# reach here (above the read timeout), but in the one test of that rule.
PIPELINE = PipelineConfig(stale_head=1.0)
PROFILE = Profile(read_pool=READ_POOL, write_pool=WRITE_POOL, breaker=None, read_pipeline=PIPELINE)


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    own = RedisServer()
    own.start()
    try:
        yield own
    finally:
        own.cleanup()


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis(host=server.host, port=server.port)
    try:
        yield client
    finally:
        await client.aclose()


def one(client: CacheClient) -> PipelineStats:
    (stats,) = client.pipeline_stats()
    return stats


async def get_calls(admin: redis.Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll, bounded, until `condition()` holds: what a background task does (a redial, a
    reply read) has no event to wait on."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 5.0
    while not condition():
        if loop.time() > give_up:
            pytest.fail(f"not {what} within 5 s")
        await asyncio.sleep(0.01)


async def test_concurrent_reads_share_one_write(server: RedisServer, admin: redis.Redis) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=PROFILE, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            assert one(client).up
            before, calls_before = one(client), await get_calls(admin)
            values = await asyncio.gather(*(client.get("k") for _ in range(READERS)))
            after, calls_after = one(client), await get_calls(admin)
            assert values == [b"v"] * READERS
            assert calls_after - calls_before == READERS  # each read did reach Redis
            assert after.commands - before.commands == READERS
            # The turn's first DENSE_TURN at once, the rest in one write at its end...
            assert after.writes - before.writes == DENSE_TURN + 1
            assert after.bypassed == before.bypassed
            assert client.stats()["read"].in_use == 0  # no pooled connection was taken
            # ... and after a turn that dense, the next turn's all in one write.
            values = await asyncio.gather(*(client.get("k") for _ in range(READERS)))
            assert values == [b"v"] * READERS
            assert one(client).writes - after.writes == 1


async def test_a_lone_read_is_written_at_once_not_at_the_turns_end(server: RedisServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=PROFILE, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            for _ in range(3):
                await asyncio.sleep(0.01)  # quiet turns: nothing is batched
                writes = one(client).writes
                read = asyncio.ensure_future(client.get("k"))
                await asyncio.sleep(0)  # the read's task runs and sends; the turn goes on
                assert one(client).writes == writes + 1
                assert await read == b"v"


async def test_reads_written_at_once_and_in_batches_get_their_own_replies(
    server: RedisServer, admin: redis.Redis
) -> None:
    # Waves across turns, each past DENSE_TURN, some waves right after a dense turn: every
    # reply must reach its own reader, whichever way its command went out.
    keys = [f"k{n}" for n in range(3 * DENSE_TURN)]
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=PROFILE, key_prefix="p:")
        async with client:
            for key in keys:
                await client.set(key, key.encode())
            reads: list[tuple[str, asyncio.Future[bytes | None]]] = []
            for wave in range(6):
                for key in keys[: (wave + 1) * 4]:
                    reads.append((key, asyncio.ensure_future(client.get(key))))
                await asyncio.sleep(0)
            for key, read in reads:
                assert await read == key.encode()
            assert one(client).writes < len(reads)  # some were batched


async def test_a_read_that_cannot_be_sent_fails_alone_and_leaves_the_replies_in_step(
    server: RedisServer,
) -> None:
    # A waiter queued for a command never written would take the next read's reply.
    keys = [f"k{n}" for n in range(READERS)]
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=PROFILE, key_prefix="p:")
        async with client:
            for key in keys:
                await client.set(key, key.encode())
            unsendable = read_call("GET", cast(Value, object()))
            with pytest.raises(CacheError, match="GET"):
                await client.run_read("GET", None, USE_DEFAULT, unsendable)
            assert one(client).in_flight == 0
            values = await asyncio.gather(*(client.get(key) for key in keys))
            assert values == [key.encode() for key in keys]


async def test_a_deadline_mid_pipeline_discards_exactly_its_reply(server: RedisServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), FaultProxy(server.port) as proxy:
        client = CacheClient.create(read_url=proxy.url, profile=PROFILE, key_prefix="p:")
        async with client:
            for name in ("a", "b", "c"):
                await client.set(name, name.encode())
            # All three are queued in one turn, their replies held 0.1 s by the proxy: b's
            # deadline ends while they are on their way, a's and c's do not.
            await proxy.add_latency(0.1)
            results = await asyncio.gather(
                client.get("a", timeout=5.0),
                client.get("b", timeout=0.02),
                client.get("c", timeout=5.0),
                return_exceptions=True,
            )
            assert results[0] == b"a"
            assert isinstance(results[1], CacheTimeout)
            assert "deadline" in str(results[1])
            assert results[2] == b"c"
            await until(lambda: one(client).in_flight == 0, "b's reply read")
            assert one(client).discarded == 1
            # The stream is still in step: every reader gets its own key's value.
            await proxy.pass_through()
            again = await asyncio.gather(*(client.get(n) for n in ("b", "a", "c", "b")))
            assert again == [b"b", b"a", b"c", b"b"]
            assert one(client).connects == 1


async def test_a_killed_connection_fails_every_waiter_and_is_dialled_again(
    server: RedisServer, admin: redis.Redis
) -> None:
    # The reads wait a second on the proxy: past the read timeout's watchdog, which would end
    # them as timeouts if CLIENT KILL came late. Out of the way: what is tested is the kill.
    profile = replace(PROFILE, read_pool=UNWATCHED_POOL)
    async with asyncio.timeout(TEST_TIMEOUT), FaultProxy(server.port) as proxy:
        client = CacheClient.create(read_url=proxy.url, profile=profile, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            pipeline_id = client.nodes("read")[0].pipeline.client_id  # type: ignore[union-attr]
            assert pipeline_id is not None
            await proxy.add_latency(1.0)  # the reads stay in flight, unanswered, for a second
            reads = [asyncio.create_task(client.get("k", timeout=5.0)) for _ in range(10)]
            await until(lambda: one(client).in_flight == 10, "reads queued")
            assert await admin.client_kill_filter(_id=pipeline_id) == 1
            results = await asyncio.gather(*reads, return_exceptions=True)
            assert all(isinstance(r, CacheUnavailable) for r in results), results
            assert one(client).failures == 1
            await proxy.pass_through()
            await until(lambda: one(client).connects == 2, "dialled again")
            before = one(client).commands
            assert await client.get("k") == b"v"
            assert one(client).commands == before + 1  # on the new connection


async def test_a_black_holed_redis_bounds_every_waiter_by_its_deadline(
    server: RedisServer,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), FaultProxy(server.port) as proxy:
        client = CacheClient.create(read_url=proxy.url, profile=PROFILE, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            await proxy.black_hole()
            results = await asyncio.gather(
                *(client.get("k", timeout=0.1) for _ in range(READERS)), return_exceptions=True
            )
            assert all(isinstance(r, CacheTimeout) for r in results), results
            assert one(client).commands >= READERS  # they were queued on the pipeline
            # Unanswered past the read timeout: the watchdog closes the connection.
            await until(lambda: one(client).failures >= 1, "stalled connection closed")
            await proxy.pass_through()
            await until(lambda: one(client).up, "dialled again")
            assert await client.get("k") == b"v"


async def test_a_full_pipeline_sends_reads_to_the_pool(server: RedisServer) -> None:
    profile = replace(PROFILE, read_pipeline=replace(PIPELINE, max_in_flight=4))
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=profile, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            values = await asyncio.gather(*(client.get("k") for _ in range(10)))
            assert values == [b"v"] * 10
            stats = one(client)
            assert stats.commands == 4
            assert stats.bypassed == 6


async def test_a_read_behind_a_stale_head_goes_to_the_pool(server: RedisServer) -> None:
    # The oldest command on the connection has waited past stale_head: a new read is not queued
    # behind it, where a slow reply would hold it too, but runs on a pooled connection.
    profile = replace(
        PROFILE,
        read_pool=UNWATCHED_POOL,
        read_pipeline=replace(PIPELINE, stale_head=0.05),
    )
    async with asyncio.timeout(TEST_TIMEOUT), FaultProxy(server.port) as proxy:
        client = CacheClient.create(read_url=proxy.url, profile=profile, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            before = one(client)
            await proxy.add_latency(2.0)  # the first read's reply held: it stays at the head
            first = asyncio.create_task(client.get("k", timeout=5.0))
            await until(lambda: one(client).in_flight == 1, "the first read queued")
            await asyncio.sleep(0.1)  # the head is now past stale_head
            second = asyncio.create_task(client.get("k", timeout=5.0))
            assert await asyncio.gather(first, second) == [b"v", b"v"]
            after = one(client)
            assert after.commands - before.commands == 1  # only the first was queued
            assert after.bypassed - before.bypassed == 1


async def test_turned_off_every_read_uses_the_pool(server: RedisServer, admin: redis.Redis) -> None:
    profile = replace(PROFILE, read_pipeline=None)
    async with asyncio.timeout(TEST_TIMEOUT):
        client = CacheClient.create(read_url=server.url, profile=profile, key_prefix="p:")
        async with client:
            await client.set("k", b"v")
            before = await get_calls(admin)
            assert await asyncio.gather(*(client.get("k") for _ in range(5))) == [b"v"] * 5
            assert await get_calls(admin) - before == 5
            assert client.pipeline_stats() == []
            names = [c["name"] for c in await admin.client_list()]
            assert "postal-read-pipeline" not in names
