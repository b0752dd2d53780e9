"""ReadThrough and Invalidator against a real Redis: the stale-fill race, single-flight, bounded
fills, and an invalidation that waits for Redis to come back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from postal.cache import (
    CacheClient,
    CacheTimeouts,
    Invalidator,
    ReadThrough,
    guarded,
)
from postal_testing.proxy import FaultProxy
from tests.integration.helpers import eventually, make_client, small_profile

KEY = guarded("doc", "1")
TTL = 60.0
# Generous deadlines: these tests are about what is read, loaded and filled, not about timing; a
# GET that timed out on a busy machine would take the error path (load alone, no fill) instead.
PROFILE = replace(small_profile(), timeouts=CacheTimeouts(get=5.0, set=5.0))


@pytest.fixture
async def cache(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> AsyncIterator[CacheClient]:
    client = make_client(redis_url, key_prefix, PROFILE)
    await client.start()
    yield client
    await client.aclose()


class Source:
    """The "database": a current version, and a loader that can be held after reading it."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.loads = 0
        self.read = asyncio.Event()  # set once a load has read the content
        self.release: asyncio.Event | None = None  # when set, loads wait for it to return

    async def load(self) -> tuple[bytes, float]:
        self.loads += 1
        content = self.content
        self.read.set()
        if self.release is not None:
            await self.release.wait()
        return content, TTL


async def test_a_fill_that_lost_the_race_to_a_write_never_reaches_the_cache(
    cache: CacheClient, raw_redis: redis.Redis, key_prefix: str
) -> None:
    """The DESIGN's interleaving, forced: read v1, write v2 + invalidate, then the late fill."""
    reads = ReadThrough(cache)
    source = Source(b"v1")
    source.release = asyncio.Event()
    reader = asyncio.create_task(reads.get(KEY, source.load))
    await source.read.wait()  # the reader missed and loaded v1...

    source.content = b"v2"  # ...the writer commits v2...
    await cache.invalidate([KEY])  # ...and invalidates; from here on v1 must never be served

    source.release.set()  # the reader's load returns, and its fill goes out
    assert await reader == b"v1"  # it began before the write: v1 is a correct answer for it
    await reads.drain(5.0)
    assert reads.stats().fills_stale_rejected == 1
    assert await raw_redis.get(f"{key_prefix}doc:{{1}}") is None

    source.release = None
    assert await reads.get(KEY, source.load) == b"v2"
    await reads.drain(5.0)
    assert reads.stats().fills_done == 1
    assert await reads.get(KEY, source.load) == b"v2"
    assert reads.stats().hits == 1


async def test_a_hundred_concurrent_misses_load_once(cache: CacheClient) -> None:
    reads = ReadThrough(cache)
    source = Source(b"v1")
    source.release = asyncio.Event()
    readers = [asyncio.create_task(reads.get(KEY, source.load)) for _ in range(100)]
    await eventually(lambda: reads.stats().misses == 100)
    source.release.set()
    assert await asyncio.gather(*readers) == [b"v1"] * 100
    assert source.loads == 1
    assert reads.stats().coalesced == 99
    await reads.drain(5.0)
    assert reads.stats().fills_done == 1


async def test_a_reader_of_a_newer_generation_does_not_join_an_older_flight(
    cache: CacheClient,
) -> None:
    reads = ReadThrough(cache)
    old = Source(b"v1")
    old.release = asyncio.Event()
    first = asyncio.create_task(reads.get(KEY, old.load))
    await old.read.wait()
    await cache.invalidate([KEY])  # a write: the generation is now 1
    new = Source(b"v2")
    assert await reads.get(KEY, new.load) == b"v2"
    old.release.set()
    assert await first == b"v1"
    assert (old.loads, new.loads, reads.stats().coalesced) == (1, 1, 0)
    await reads.drain(5.0)
    assert await reads.get(KEY, Source(b"unused").load) == b"v2"


async def test_when_fills_are_pending_up_to_the_bound_the_next_is_skipped_at_once(
    cache: CacheClient,
) -> None:
    reads = ReadThrough(cache, max_pending_fills=1)
    source = Source(b"v")
    source.release = asyncio.Event()
    keys = [guarded("doc", str(number)) for number in range(2)]
    readers = [asyncio.create_task(reads.get(key, source.load)) for key in keys]
    await eventually(lambda: source.loads == 2)
    source.release.set()  # both loads return together: the first fill is still pending...
    async with asyncio.timeout(1.0):  # ...and the second request does not wait for it
        assert await asyncio.gather(*readers) == [b"v", b"v"]
    stats = reads.stats()
    assert (stats.fills_skipped, stats.pending_fills + stats.fills_done) == (1, 1)
    await reads.drain(5.0)
    assert reads.stats().fills_done == 1


async def test_an_invalidation_while_redis_is_unreachable_is_bypassed_then_retried(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with FaultProxy(upstream) as proxy:
        client = make_client(proxy.url, key_prefix, PROFILE)
        async with client:
            # The first retry comes after the read below (2 s: longer than any stall of this
            # process): that read must be the bypass at work.
            invalidator = Invalidator(
                client, give_up_after=30.0, retry_interval=2.0, max_retry_interval=2.0
            )
            reads = ReadThrough(client, bypass=invalidator.is_pending)
            source = Source(b"v1")
            assert await reads.get(KEY, source.load) == b"v1"
            await reads.drain(5.0)  # v1 is cached

            await proxy.refuse()  # Redis gone
            source.content = b"v2"  # the write commits...
            assert not await invalidator.invalidate([KEY])  # ...but cannot invalidate
            assert invalidator.is_pending(KEY)
            assert not invalidator.is_pending(guarded("doc", "2"))
            await proxy.pass_through()  # Redis back, still holding v1
            counter = f"{key_prefix}doc:{{1}}:gen"
            opened = await raw_redis.get(counter)  # by the first miss, which quoted it
            assert opened is not None
            held = await raw_redis.get(f"{key_prefix}doc:{{1}}")  # b"<opened> <expires-at>\nv1"
            assert held.startswith(opened + b" ")
            assert held.endswith(b"\nv1")
            assert await reads.get(KEY, source.load) == b"v2"  # not v1: bypassed while pending
            assert reads.stats().bypassed == 1

            await eventually(lambda: not invalidator.is_pending(KEY), timeout=10.0)
            assert invalidator.stats().retried == 1
            assert int(await raw_redis.get(counter)) == int(opened) + 1
            assert await raw_redis.get(f"{key_prefix}doc:{{1}}") is None
            assert await reads.get(KEY, source.load) == b"v2"  # through the cache again
            await reads.drain(5.0)
            assert await reads.get(KEY, source.load) == b"v2"
            assert reads.stats().hits == 1
            await invalidator.aclose()
