"""Generation-guarded values and the per-role breaker, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as redis

from postal.cache import (
    GENERATION_TTL,
    UNFILLABLE,
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
from postal.cache.policy.guard import now_ms
from postal_testing.redis_servers import RedisServer, free_port
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
    counter = f"{key_prefix}item:{{7}}:gen"
    missed = await cache.get_guarded(KEY)  # nothing: the miss creates the counter
    assert missed.payload is None
    assert await raw_redis.get(counter) == b"%d" % missed.generation
    assert missed.generation > 0
    before = now_ms()
    assert await cache.fill_guarded(KEY, missed.generation, b'{"id": 7}', ttl=60)
    after = now_ms()
    stored = await raw_redis.get(f"{key_prefix}item:{{7}}")
    stamped, payload = stored.split(b"\n", 1)
    generation, expires_at_ms = stamped.split(b" ")
    assert (generation, payload) == (b"%d" % missed.generation, b'{"id": 7}')
    assert before + 60_000 <= int(expires_at_ms) <= after + 60_000  # the fill's clock + TTL
    assert 59_000 < await raw_redis.pttl(f"{key_prefix}item:{{7}}") <= 60_000
    expires_at = int(expires_at_ms) / 1000
    assert await cache.get_guarded(KEY) == Guarded(b'{"id": 7}', missed.generation, expires_at)

    await cache.invalidate([KEY])
    bumped = missed.generation + 1
    assert await raw_redis.exists(f"{key_prefix}item:{{7}}") == 0
    assert await raw_redis.get(counter) == b"%d" % bumped
    generation_ttl_ms = await raw_redis.pttl(counter)
    assert GENERATION_TTL * 1000 - 60_000 < generation_ttl_ms <= GENERATION_TTL * 1000
    assert await cache.get_guarded(KEY) == Guarded(None, bumped)
    assert await cache.fill_guarded(KEY, bumped, b"v2", ttl=60)
    assert (await cache.get_guarded(KEY)).payload == b"v2"


async def test_a_counter_is_created_at_a_random_start_by_a_bump_or_a_miss(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    # Never near 0, where a counter that started again (a restart, an eviction) could climb
    # back to a generation a load in flight quoted; and different each time it is created.
    starts = set()
    for _ in range(3):
        await raw_redis.delete(f"{key_prefix}item:{{7}}:gen", f"{key_prefix}list:{{all}}:gen")
        starts.add((await cache.get_guarded(KEY)).generation)
        await cache.invalidate([], ["list:{all}:gen"])
        starts.add(int(await raw_redis.get(f"{key_prefix}list:{{all}}:gen")) - 1)
    assert len(starts) == 6
    assert min(starts) > 1_000_000


async def test_a_value_stamped_under_an_absent_counter_still_reads(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    # What an older Postal stored (a fill quoting an absent counter): a hit until it expires.
    await raw_redis.set(f"{key_prefix}item:{{7}}", b"0\nolder")
    assert await cache.get_guarded(KEY) == Guarded(b"older", 0)


async def test_a_value_with_another_stamp_is_a_miss(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    await raw_redis.set(f"{key_prefix}item:{{7}}:gen", 3)
    await raw_redis.set(f"{key_prefix}item:{{7}}", b"2\nold")  # e.g. a fill that beat the DEL
    assert await cache.get_guarded(KEY) == Guarded(None, 3)


async def test_a_value_stamped_without_an_expiry_is_a_hit_that_never_expires_early(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """What a worker of the previous version writes, read during a rolling upgrade."""
    await raw_redis.set(f"{key_prefix}item:{{7}}:gen", 3)
    await raw_redis.set(f"{key_prefix}item:{{7}}", b'3\n{"id": 7}', px=60_000)
    assert await cache.get_guarded(KEY) == Guarded(b'{"id": 7}', 3, expires_at=None)


async def test_a_fill_quoting_an_old_generation_is_rejected(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    seen = await cache.get_guarded(KEY)  # the reader's view, before the write
    await cache.invalidate([KEY])  # the writer's invalidation
    assert not await cache.fill_guarded(KEY, seen.generation, b"v1", ttl=60)
    assert await raw_redis.exists(f"{key_prefix}item:{{7}}") == 0
    assert await cache.get_guarded(KEY) == Guarded(None, seen.generation + 1)


async def test_a_fill_across_a_redis_restart_is_rejected(own_redis: RedisServer) -> None:
    # The reader quotes a generation, the writer's invalidation lands, then Redis restarts
    # empty and takes new bumps: the counter started again, but not from anywhere near the
    # quoted generation, and an absent counter is never what a reader quoted.
    cache = make_client(own_redis.url, "restart:", small_profile())
    await cache.start()
    try:
        seen = await cache.get_guarded(KEY)  # a miss: the counter is created, and quoted
        await cache.invalidate([KEY])
        own_redis.restart()
        assert not await _fill_when_back(cache, seen.generation)  # the counter is absent
        for _ in range(3):  # the counter starts again, at random, and climbs
            await cache.invalidate([KEY])
            assert not await cache.fill_guarded(KEY, seen.generation, b"v1", ttl=60)
        assert (await cache.get_guarded(KEY)).payload is None
    finally:
        await cache.aclose()


async def _fill_when_back(cache: CacheClient, generation: int) -> bool:
    """The reader's fill, sent once the restarted Redis answers (the first dials may fail)."""
    for _ in range(100):
        try:
            return await cache.fill_guarded(KEY, generation, b"v1", ttl=60)
        except CacheError:
            await asyncio.sleep(0.05)
    raise AssertionError("the restarted Redis never answered")


async def test_a_miss_quotes_unfillable_when_the_counter_cannot_be_created(
    redis_url: str, key_prefix: str
) -> None:
    # Reads answer, the write role does not: no generation can be established, so the reader
    # quotes one that no counter equals, and its fill writes nothing.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    cache = CacheClient.create(
        read_url=redis_url, write_url=closed, profile=small_profile(), key_prefix=key_prefix
    )
    await cache.start()
    try:
        assert await cache.get_guarded(KEY) == Guarded(None, UNFILLABLE)
    finally:
        await cache.aclose()


async def test_the_fill_script_is_resent_after_redis_forgot_it(
    cache: CacheClient, raw_redis: redis.Redis
) -> None:
    generation = (await cache.get_guarded(KEY)).generation
    assert await cache.fill_guarded(KEY, generation, b"a", ttl=60)  # cached on the server by now
    await raw_redis.script_flush()  # as after a restart or a failover
    assert await cache.fill_guarded(KEY, generation, b"b", ttl=60)
    assert await cache.fill_guarded(KEY, generation, b"c", ttl=60)
    assert (await cache.get_guarded(KEY)).payload == b"c"


async def test_a_bare_generation_turns_every_key_it_guards_into_a_miss(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    pages = [GuardedKey(f"list:{{all}}:{number}", "list:{all}:gen") for number in range(3)]
    generation = (await cache.get_guarded(pages[0])).generation
    for page in pages:
        assert await cache.fill_guarded(page, generation, b"page", ttl=60)
    await cache.invalidate([], ["list:{all}:gen"])
    assert [await cache.get_guarded(page) for page in pages] == [Guarded(None, generation + 1)] * 3
    await cache.invalidate([])  # nothing to do: no round trip, no error


async def test_guarded_operations_emit_events(cache: CacheClient) -> None:
    events: list[CacheEvent] = []
    cache.subscribe(events.append)
    generation = (await cache.get_guarded(KEY)).generation
    await cache.fill_guarded(KEY, generation, b"x", ttl=60)
    await cache.get_guarded(KEY)
    await cache.invalidate([KEY])
    assert [(event.role, event.command, event.key, event.outcome) for event in events] == [
        ("read", "GET", "item:{7}", Outcome.MISS),
        ("write", "EVALSHA", "item:{7}", Outcome.OK),  # the counter, created
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
    cooldown = 1.0  # no probe let in before the refusal below, however the machine stalls
    profile = replace(
        small_profile(min_idle=0), breaker=BreakerConfig(3, failure_window=0.0, cooldown=cooldown)
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
        await asyncio.sleep(cooldown)
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
