"""Generation-guarded values and the per-role breaker, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as redis

from postal.cache import (
    GENERATION_TTL,
    BreakerConfig,
    BreakerState,
    CacheClient,
    CacheError,
    CacheEvent,
    CacheUnavailable,
    CircuitOpen,
    Guarded,
    GuardedKey,
    Outcome,
    guarded,
)
from postal_testing.redis_servers import free_port
from tests.integration.helpers import make_client, small_profile

KEY = guarded("item", "7")


@pytest.fixture
async def cache(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> AsyncIterator[CacheClient]:
    client = make_client(redis_url, key_prefix, small_profile())
    await client.start()
    yield client
    await client.aclose()


async def test_fill_then_get_then_invalidate(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    assert await cache.get_guarded(KEY) == Guarded(None, 0)  # nothing, counter absent
    assert await cache.fill_guarded(KEY, 0, b'{"id": 7}', ttl=60)
    assert await raw_redis.get(f"{key_prefix}item:{{7}}") == b'0\n{"id": 7}'
    assert 59_000 < await raw_redis.pttl(f"{key_prefix}item:{{7}}") <= 60_000
    assert await cache.get_guarded(KEY) == Guarded(b'{"id": 7}', 0)

    await cache.invalidate([KEY])
    assert await raw_redis.exists(f"{key_prefix}item:{{7}}") == 0
    assert await raw_redis.get(f"{key_prefix}item:{{7}}:gen") == b"1"
    generation_ttl_ms = await raw_redis.pttl(f"{key_prefix}item:{{7}}:gen")
    assert GENERATION_TTL * 1000 - 60_000 < generation_ttl_ms <= GENERATION_TTL * 1000
    assert await cache.get_guarded(KEY) == Guarded(None, 1)
    assert await cache.fill_guarded(KEY, 1, b"v2", ttl=60)
    assert await cache.get_guarded(KEY) == Guarded(b"v2", 1)


async def test_a_value_with_another_stamp_is_a_miss(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    await raw_redis.set(f"{key_prefix}item:{{7}}:gen", 3)
    await raw_redis.set(f"{key_prefix}item:{{7}}", b"2\nold")  # e.g. a fill that beat the DEL
    assert await cache.get_guarded(KEY) == Guarded(None, 3)


async def test_a_fill_quoting_an_old_generation_is_rejected(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    seen = await cache.get_guarded(KEY)  # the reader's view, before the write
    await cache.invalidate([KEY])  # the writer's invalidation
    assert not await cache.fill_guarded(KEY, seen.generation, b"v1", ttl=60)
    assert await raw_redis.exists(f"{key_prefix}item:{{7}}") == 0
    assert await cache.get_guarded(KEY) == Guarded(None, 1)


async def test_the_fill_script_is_resent_after_redis_forgot_it(
    cache: CacheClient, raw_redis: redis.Redis
) -> None:
    assert await cache.fill_guarded(KEY, 0, b"a", ttl=60)  # cached on the server by now
    await raw_redis.script_flush()  # as after a restart or a failover
    assert await cache.fill_guarded(KEY, 0, b"b", ttl=60)
    assert await cache.fill_guarded(KEY, 0, b"c", ttl=60)
    assert await cache.get_guarded(KEY) == Guarded(b"c", 0)


async def test_a_bare_generation_turns_every_key_it_guards_into_a_miss(
    cache: CacheClient,
) -> None:
    pages = [GuardedKey(f"list:{{all}}:{number}", "list:{all}:gen") for number in range(3)]
    for page in pages:
        assert await cache.fill_guarded(page, 0, b"page", ttl=60)
    await cache.invalidate([], ["list:{all}:gen"])
    assert [await cache.get_guarded(page) for page in pages] == [Guarded(None, 1)] * 3
    await cache.invalidate([])  # nothing to do: no round trip, no error


async def test_guarded_operations_emit_events(cache: CacheClient) -> None:
    events: list[CacheEvent] = []
    cache.subscribe(events.append)
    await cache.get_guarded(KEY)
    await cache.fill_guarded(KEY, 0, b"x", ttl=60)
    await cache.get_guarded(KEY)
    await cache.invalidate([KEY])
    assert [(event.role, event.command, event.key, event.outcome) for event in events] == [
        ("read", "GET", "item:{7}", Outcome.MISS),
        ("write", "EVALSHA", "item:{7}", Outcome.OK),
        ("read", "GET", "item:{7}", Outcome.HIT),
        ("write", "PIPELINE", "item:{7}", Outcome.OK),
    ]


async def test_an_error_reply_is_a_cache_error_that_does_not_trip_the_breaker(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    await raw_redis.set(f"{key_prefix}item:{{7}}:gen", "not a number")
    for _ in range(10):
        with pytest.raises(CacheError) as caught:
            await cache.invalidate([KEY])  # INCR answers an error
        assert not isinstance(caught.value, CacheUnavailable)
    assert cache.breaker_state("write") is BreakerState.CLOSED
    with pytest.raises(CacheError, match="not an integer"):
        await cache.get_guarded(KEY)


async def test_the_breaker_opens_per_role_and_fails_fast(key_prefix: str) -> None:
    closed_port = free_port()  # nothing listens there: every dial is refused
    profile = replace(
        small_profile(min_idle=0), breaker=BreakerConfig(3, failure_window=0.0, cooldown=0.2)
    )
    profile = replace(profile, write_pool=replace(profile.write_pool, min_idle=0))
    client = make_client(f"redis://127.0.0.1:{closed_port}/0", key_prefix, profile)
    events: list[CacheEvent] = []
    client.subscribe(events.append)
    async with client:
        for _ in range(3):
            with pytest.raises(CacheUnavailable) as caught:
                await client.get("k")
            assert not isinstance(caught.value, CircuitOpen)
        assert client.breaker_state("read") is BreakerState.OPEN
        assert client.breaker_state("write") is BreakerState.CLOSED  # roles are separate
        with pytest.raises(CircuitOpen, match="circuit breaker open"):
            await client.get_guarded(KEY)
        assert events[-1].outcome is Outcome.CIRCUIT_OPEN
        read_breaker = client.breaker("read")
        assert read_breaker is not None
        assert read_breaker.stats().rejected == 1
        await asyncio.sleep(0.2)
        with pytest.raises(CacheUnavailable) as probe:  # the probe is let through, and fails
            await client.get("k")
        assert not isinstance(probe.value, CircuitOpen)
        assert client.breaker_state("read") is BreakerState.OPEN
        assert read_breaker.stats().opened == 2


async def test_the_before_profile_has_no_breaker(key_prefix: str) -> None:
    from postal.cache import BEFORE

    client = make_client(f"redis://127.0.0.1:{free_port()}/0", key_prefix, BEFORE)
    async with client:
        for _ in range(10):
            with pytest.raises(CacheUnavailable) as caught:
                await client.get("k")
            assert not isinstance(caught.value, CircuitOpen)
        assert client.breaker("read") is None
        assert client.breaker_state("read") is BreakerState.CLOSED
