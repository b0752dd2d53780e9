"""CacheClient against a real Redis: operations, key namespacing, deadlines, events."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import redis.asyncio as redis

from postal.cache import TUNED, CacheClient, CacheEvent, CacheTimeout, Outcome, PoolTimeout
from tests.integration.helpers import make_client, small_profile


@pytest.fixture
async def cache(redis_url: str, key_prefix: str, raw_redis: redis.Redis) -> CacheClient:
    client = make_client(redis_url, key_prefix, small_profile())
    await client.start()
    yield client  # type: ignore[misc]
    await client.aclose()


async def test_set_get_mget_delete_round_trip(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    await cache.set("a", b"alpha")
    await cache.set("b", "beta")
    assert await cache.get("a") == b"alpha"
    assert await cache.get("missing") is None
    assert await cache.mget(["a", "missing", "b"]) == [b"alpha", None, b"beta"]
    assert await raw_redis.get(f"{key_prefix}a") == b"alpha"  # namespaced in Redis
    assert await cache.delete("a", "missing") == 1
    assert await cache.get("a") is None
    assert await cache.mget([]) == []
    assert await cache.delete() == 0


async def test_set_with_ttl_expires(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    # Sent in milliseconds (EX would round 0.9 s to 1 s, or refuse 0): a time to live short
    # of a second, and long enough that a stall between the two calls cannot expire it.
    await cache.set("short", b"x", ttl=0.9)
    ttl_ms = await raw_redis.pttl(f"{key_prefix}short")
    assert 0 < ttl_ms <= 900
    await cache.set("forever", b"x")
    assert await raw_redis.pttl(f"{key_prefix}forever") == -1


async def test_pipeline_sends_queued_commands_in_one_go(cache: CacheClient) -> None:
    async with cache.pipeline() as pipe:
        pipe.set("p1", b"1", ttl=60).set("p2", b"2").get("p1").delete("p2")
        assert len(pipe) == 4
        assert await pipe.execute() == [b"OK", b"OK", b"1", 1]  # replies as Redis sends them
    assert await cache.get("p2") is None


async def test_a_deadline_expiring_on_the_wire_raises_cache_timeout_at_once(
    cache: CacheClient,
) -> None:
    await cache.set("big", b"x" * 2_000_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CacheTimeout) as caught:
        await cache.get("big", timeout=0.0005)
    assert not isinstance(caught.value, PoolTimeout)
    assert "GET on read" in str(caught.value)
    assert loop.time() - started < 0.5  # "at once": nowhere near the 2 s socket timeout
    assert await cache.get("big") == b"x" * 2_000_000  # the pool is fine afterwards


async def test_timeout_none_disables_the_deadline(cache: CacheClient) -> None:
    await cache.set("k", b"v", timeout=None)
    assert await cache.get("k", timeout=None) == b"v"


async def test_the_pool_wait_counts_against_the_deadline(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    # Reads through the pool, not the read pipeline (which takes no pooled connection).
    profile = replace(small_profile(max_size=1, min_idle=1, max_idle=1), read_pipeline=None)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = await pool.get_connection()  # the only connection, taken
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PoolTimeout, match="no pooled connection within the 50ms deadline"):
            await client.get("k", timeout=0.05)
        assert 0.04 < loop.time() - started < 0.5
        assert pool.stats().timeouts == 1
        await pool.release(held)
        assert await client.get("k") is None


async def test_the_pool_timeout_applies_when_shorter_than_the_deadline(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = small_profile(max_size=1, min_idle=1, max_idle=1, pool_timeout=0.05)
    profile = replace(profile, read_pipeline=None)  # reads through the pool
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = await pool.get_connection()
        with pytest.raises(PoolTimeout, match="no connection free within 50ms"):
            await client.get("k", timeout=None)
        await pool.release(held)
        assert pool.stats().in_use == 0


async def test_every_operation_emits_an_event(cache: CacheClient) -> None:
    events: list[CacheEvent] = []
    cache.subscribe(events.append)
    await cache.set("e", b"v")
    await cache.get("e")
    await cache.get("nothing")
    await cache.mget(["e"])
    await cache.delete("e")
    with pytest.raises(CacheTimeout):
        await cache.get("e", timeout=0)
    seen = [(e.role, e.command, e.key, e.outcome) for e in events]
    assert seen == [
        ("write", "SET", "e", Outcome.OK),
        ("read", "GET", "e", Outcome.HIT),
        ("read", "GET", "nothing", Outcome.MISS),
        ("read", "MGET", "e", Outcome.OK),
        ("write", "DEL", "e", Outcome.OK),
        ("read", "GET", "e", Outcome.TIMEOUT),
    ]
    assert all(e.duration >= 0 for e in events)
    assert events[-1].error is not None


def test_the_default_deadlines_are_the_seeds() -> None:
    assert TUNED.timeouts.get == 0.1
    assert TUNED.timeouts.set == 0.2
