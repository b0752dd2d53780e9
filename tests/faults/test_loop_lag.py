"""Timeouts on a saturated process are no verdict on Redis (cache.loop_lag), with a real Redis
behind a proxy that makes every reply late.

Both tests make every GET time out the same way (replies 300 ms late, a 100 ms deadline). The
only difference is this process's event loop: idle, the breaker opens as it must; hogged by
work that keeps it 70 ms late (a CPU-bound worker), it stays closed, since the loop, not Redis,
could be what let the deadlines expire. The timeouts are timeouts to the caller either way.

And a read-through whose GET timed out only because the loop was behind asks Redis again
rather than send the read to the database; one that Redis itself made late still goes there.
So does a write's invalidation, which would otherwise be left to a background retry while other
processes serve the old value; one that Redis made late is left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from postal.cache import (
    BreakerConfig,
    BreakerState,
    CacheClient,
    CacheTimeout,
    CacheTimeouts,
    Invalidator,
    Profile,
    ReadThrough,
    guarded,
)
from postal.cache.transport.loop_lag import LoopLag
from postal_testing.proxy import FaultProxy
from tests.integration.helpers import small_profile

GETS = 12  # sequential: well past the threshold, over more than the window
PROFILE = Profile(
    read_pool=small_profile().read_pool,
    write_pool=small_profile().write_pool,
    timeouts=CacheTimeouts(get=0.1, set=0.2),
    breaker=BreakerConfig(failure_threshold=3, failure_window=0.25, cooldown=5.0),
)


# For the tests where Redis alone is late: a stall of this process for half a deadline would
# excuse the timeout as the loop's, and a test process can stall 50 ms (a full collection), so
# deadlines no everyday stall reaches half of, and replies later still.
REDIS_LATE = replace(PROFILE, timeouts=CacheTimeouts(get=0.5, set=1.0))


@contextlib.asynccontextmanager
async def late_replies(
    redis_url: str, key_prefix: str, profile: Profile, each_way: float
) -> AsyncIterator[CacheClient]:
    """A client whose Redis replies come `each_way` * 2 seconds late (a proxy between)."""
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with FaultProxy(upstream) as proxy:
        cache = CacheClient.create(read_url=proxy.url, profile=profile, key_prefix=key_prefix)
        async with cache:
            await proxy.add_latency(each_way)
            yield cache


@pytest.fixture
async def slow_cache(redis_url: str, key_prefix: str) -> AsyncIterator[CacheClient]:
    async with late_replies(redis_url, key_prefix, PROFILE, 0.15) as cache:  # 300 ms late
        yield cache


@pytest.fixture
async def late_redis(redis_url: str, key_prefix: str) -> AsyncIterator[CacheClient]:
    async with late_replies(redis_url, key_prefix, REDIS_LATE, 0.75) as cache:  # 1.5 s late
        yield cache


@contextlib.contextmanager
def hogged_loop(block: float = 0.07) -> Iterator[None]:
    """Keep the running loop about `block` seconds late, as a CPU-bound worker's is."""

    async def hog() -> None:
        while True:
            time.sleep(block)  # noqa: ASYNC251 - the point: blocking work between awaits
            await asyncio.sleep(0)

    task = asyncio.ensure_future(hog())
    try:
        yield
    finally:
        task.cancel()


async def time_out_every_get(cache: CacheClient) -> int:
    timeouts = 0
    for _ in range(GETS):
        with contextlib.suppress(CacheTimeout):
            await cache.get("k")
            continue
        timeouts += 1
        if cache.breaker_state("read") is BreakerState.OPEN:
            break
    return timeouts


async def test_on_an_idle_loop_late_replies_open_the_breaker(slow_cache: CacheClient) -> None:
    assert await time_out_every_get(slow_cache) >= 3
    assert slow_cache.breaker_state("read") is BreakerState.OPEN


async def test_on_a_saturated_loop_the_same_timeouts_leave_it_closed(
    slow_cache: CacheClient,
) -> None:
    with hogged_loop():
        await asyncio.sleep(0.1)  # the lag is seen
        assert await time_out_every_get(slow_cache) == GETS
    assert slow_cache.breaker_state("read") is BreakerState.CLOSED
    assert slow_cache.excused_timeouts == GETS


async def test_loop_lag_counts_how_long_an_operation_was_held_up() -> None:
    lag = LoopLag(interval=0.01)
    loop = asyncio.get_running_loop()
    assert lag.behind_since(loop.time()) == 0.0  # not sampling yet
    lag.start()
    try:
        await asyncio.sleep(0.02)
        before_the_stall = loop.time()
        time.sleep(0.1)  # noqa: ASYNC251 - a stall: the sample due meanwhile is overdue now
        assert lag.behind_since(before_the_stall) >= 0.09  # seen while it lasts
        await asyncio.sleep(0.02)  # the late sample ran, and was kept
        assert lag.behind_since(before_the_stall) >= 0.09
        # An operation that began after the stall was not held up by it.
        assert lag.behind_since(loop.time()) == 0.0
    finally:
        lag.stop()
    assert lag.behind_since(before_the_stall) == 0.0


async def read_through_a_stall(cache: CacheClient, reads: ReadThrough, stall: float) -> bytes:
    """One read-through of `post:{1}` with this process's loop blocked for `stall` seconds just
    after the GET went out, as a worker's loop is behind a burst of CPU-bound requests."""
    key = guarded("post", "1")
    read = asyncio.ensure_future(reads.get(key, load_from_the_database))
    await asyncio.sleep(0)  # the read runs until its GET is sent: it waits for the reply now
    time.sleep(stall)  # noqa: ASYNC251 - the point: the loop is behind, Redis is not
    return await read


LOADS: list[int] = []


async def load_from_the_database() -> tuple[bytes, float]:
    LOADS.append(1)
    return b"from the database", 60.0


@pytest.fixture
async def cache_with_a_post(redis_url: str, key_prefix: str) -> AsyncIterator[CacheClient]:
    LOADS.clear()
    async with CacheClient.create(read_url=redis_url, profile=PROFILE, key_prefix=key_prefix) as c:
        found = await c.get_guarded(guarded("post", "1"))
        assert await c.fill_guarded(guarded("post", "1"), found.generation, b"cached", ttl=60)
        yield c


async def test_a_read_timed_out_by_a_late_loop_is_asked_again_not_sent_to_the_database(
    cache_with_a_post: CacheClient,
) -> None:
    reads = ReadThrough(cache_with_a_post)
    assert await read_through_a_stall(cache_with_a_post, reads, stall=0.3) == b"cached"
    stats = reads.stats()
    assert (stats.late_retries, stats.cache_errors, stats.hits, LOADS) == (1, 0, 1, [])


async def test_a_read_timed_out_by_redis_still_goes_to_the_database(
    late_redis: CacheClient,
) -> None:
    LOADS.clear()
    reads = ReadThrough(late_redis)  # Redis late (the proxy), the loop idle
    payload = await reads.get(guarded("post", "1"), load_from_the_database)
    assert payload == b"from the database"
    stats = reads.stats()
    assert (stats.late_retries, stats.cache_errors, LOADS) == (0, 1, [1])


async def test_an_invalidation_timed_out_by_a_late_loop_is_sent_again_before_it_returns(
    cache_with_a_post: CacheClient,
) -> None:
    key = guarded("post", "1")
    invalidator = Invalidator(cache_with_a_post, give_up_after=60.0)
    try:
        invalidation = asyncio.ensure_future(invalidator.invalidate([key]))
        await asyncio.sleep(0)  # its pipeline is sent: it waits for the reply now
        time.sleep(0.3)  # noqa: ASYNC251 - past the 200 ms SET deadline; Redis is not late
        assert await invalidation is True  # taken: not left to a background retry
        stats = invalidator.stats()
        assert (stats.late_retries, stats.failed, stats.pending_keys) == (1, 0, 0)
        assert (await cache_with_a_post.get_guarded(key)).payload is None
    finally:
        await invalidator.aclose()


async def test_an_invalidation_timed_out_by_redis_is_left_pending(
    late_redis: CacheClient,
) -> None:
    # Redis late, the loop idle
    invalidator = Invalidator(late_redis, give_up_after=60.0)
    try:
        assert await invalidator.invalidate([guarded("post", "1")]) is False
        stats = invalidator.stats()
        assert (stats.late_retries, stats.failed, stats.pending_keys) == (0, 1, 1)
    finally:
        await invalidator.aclose()
