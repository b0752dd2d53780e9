"""The circuit breaker under a black-holed Redis: reads stop paying the deadline, then recover.

Without a breaker every read of a black-holed Redis waits out its whole GET deadline before it
falls back to the loader. With one, after `THRESHOLD` such reads the read role fails fast and the
read-through goes straight to the loader; once Redis answers again and the cooldown has passed, a
probe closes the breaker and hits come back. What is checked is behaviour (reads refused by the
breaker, counted; reads that paid the deadline, which took about its length), not benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from postal.cache import (
    BreakerConfig,
    BreakerState,
    CacheClient,
    CacheTimeouts,
    PoolConfig,
    Profile,
    ReadThrough,
    guarded,
)
from postal_testing.proxy import FaultProxy

GET_DEADLINE = 0.2  # seconds: wide margins on a noisy machine
THRESHOLD = 3
COOLDOWN = 1.0  # the 20 fast reads stay inside it, however the machine stalls them
SOCKET_TIMEOUT = 1.0  # dials into the black hole give up after this
TEST_TIMEOUT = 30.0
POOL = PoolConfig(
    max_size=10,
    min_idle=2,
    max_idle=5,
    maintenance_interval=0.05,
    dial_timeout=SOCKET_TIMEOUT,
    read_timeout=SOCKET_TIMEOUT,
    write_timeout=SOCKET_TIMEOUT,
)
PROFILE = Profile(
    read_pool=POOL,
    write_pool=POOL,
    timeouts=CacheTimeouts(get=GET_DEADLINE, set=2 * GET_DEADLINE),
    breaker=BreakerConfig(failure_threshold=THRESHOLD, cooldown=COOLDOWN),
)
KEY = guarded("doc", "1")


@dataclass(slots=True)
class Rig:
    proxy: FaultProxy
    cache: CacheClient
    reads: ReadThrough
    loads: int = 0

    async def load(self) -> tuple[bytes, float]:
        self.loads += 1
        return b"from the database", 60.0

    async def timed_get(self) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await self.reads.get(KEY, self.load) == b"from the database"
        return loop.time() - started


@pytest.fixture
async def rig(redis_url: str, key_prefix: str, raw_redis: redis.Redis) -> AsyncIterator[Rig]:
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with FaultProxy(upstream) as proxy:
        cache = CacheClient.create(read_url=proxy.url, profile=PROFILE, key_prefix=key_prefix)
        async with cache:
            reads = ReadThrough(cache)
            yield Rig(proxy, cache, reads)
            await reads.drain(1.0)


async def test_an_open_breaker_stops_reads_paying_the_deadline_and_a_probe_closes_it(
    rig: Rig,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await rig.timed_get()  # miss, load, fill
        await rig.reads.drain(1.0)
        await rig.timed_get()
        assert rig.reads.stats().hits == 1

        await rig.proxy.black_hole()
        # THRESHOLD reads pay the deadline and open it. A timeout through which this test's
        # process stalled for half the deadline is the loop's, not Redis's (cache.loop_lag):
        # the breaker takes no verdict from it, and one more read pays.
        paying: list[float] = []
        while rig.cache.breaker_state("read") is not BreakerState.OPEN:
            assert len(paying) < THRESHOLD + rig.cache.excused_timeouts, paying
            paying.append(await rig.timed_get())
        assert len(paying) == THRESHOLD + rig.cache.excused_timeouts
        # Each waited for its deadline (asyncio timers never fire early), not much longer.
        assert all(GET_DEADLINE * 0.9 <= took < GET_DEADLINE + 0.5 for took in paying), paying

        breaker = rig.cache.breaker("read")
        assert breaker is not None
        rejected = breaker.stats().rejected
        failing_fast = [await rig.timed_get() for _ in range(20)]
        # None of them went to Redis: each was refused by the breaker and went to the loader.
        assert breaker.stats().rejected - rejected == 20, failing_fast
        assert rig.reads.stats().cache_errors == len(paying) + 20
        assert rig.reads.stats().fills_done == 1  # nothing filled without a generation

        await rig.proxy.pass_through()
        loop = asyncio.get_running_loop()
        hits_before = rig.reads.stats().hits
        give_up = loop.time() + 10.0
        while rig.reads.stats().hits == hits_before:
            assert loop.time() < give_up, f"no hit came back; breaker {rig.cache.breaker('read')}"
            await rig.timed_get()
            await asyncio.sleep(0.05)
        assert rig.cache.breaker_state("read") is BreakerState.CLOSED
        assert breaker.stats().opened >= 1
        assert rig.cache.breaker_state("write") is BreakerState.CLOSED
