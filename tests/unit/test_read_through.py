"""ReadThrough's decisions (single-flight, bounded fills, fallback, bypass) over an in-memory fake.

The fake keeps (generation, payload) per key and a counter per generation key, as the guard does
in Redis; the real thing is exercised in tests/integration/test_read_through.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from postal.cache import (
    UNFILLABLE,
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    FillEvent,
    FillOutcome,
    Guarded,
    GuardedKey,
    Loader,
    ReadThrough,
    guarded,
)
from postal.cache.policy.fallback import UNGUARDED_JOIN_WINDOW
from tests.support.clock import SetClock
from tests.support.loop import spin_until

KEY = guarded("thing", "1")
TTL = 60.0


class FakeCache:
    def __init__(self) -> None:
        self.values: dict[str, tuple[int, bytes]] = {}
        self.generations: dict[str, int] = {}
        self.reads = 0
        self.read_error: CacheError | None = None
        self.fill_error: CacheError | None = None
        self.fill_gate: asyncio.Event | None = None  # fills wait for it when set
        self.fill_ttls: list[float] = []
        self.unfillable = False  # a miss finds no generation it could quote

    async def get_guarded(self, key: GuardedKey) -> Guarded:
        self.reads += 1
        await asyncio.sleep(0)  # a round trip lets other tasks run
        if self.read_error is not None:
            raise self.read_error
        generation = self.generations.get(key.generation_key, 0)
        stored = self.values.get(key.key)
        if stored is not None and stored[0] == generation:
            return Guarded(stored[1], generation)
        return Guarded(None, UNFILLABLE if self.unfillable else generation)

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool:
        if self.fill_gate is not None:
            await self.fill_gate.wait()
        if self.fill_error is not None:
            raise self.fill_error
        self.fill_ttls.append(ttl)
        if self.generations.get(key.generation_key, 0) != generation:
            return False
        self.values[key.key] = (generation, payload)
        return True

    def invalidate(self, key: GuardedKey) -> None:
        self.generations[key.generation_key] = self.generations.get(key.generation_key, 0) + 1
        self.values.pop(key.key, None)


class CountingLoader:
    """A loader returning `payload`; with `gate`, each call waits for it before returning."""

    def __init__(self, payload: bytes = b"v1", gate: asyncio.Event | None = None) -> None:
        self.payload = payload
        self.gate = gate
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self) -> tuple[bytes, float]:
        self.calls += 1
        payload = self.payload
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return payload, TTL


async def settle(check: Callable[[], bool]) -> None:
    """Let the loop run until `check` holds (the fake does no I/O: a few rounds suffice)."""
    await spin_until(check, rounds=1000)


@pytest.fixture
def cache() -> FakeCache:
    return FakeCache()


async def test_a_miss_without_a_generation_to_quote_loads_and_sends_no_fill(
    cache: FakeCache,
) -> None:
    cache.unfillable = True  # the counter could not be created: the write role is down
    reads = ReadThrough(cache)
    assert await reads.get(KEY, CountingLoader()) == b"v1"
    await reads.drain(1.0)
    assert cache.fill_ttls == []  # no fill was sent: it could only have been refused
    assert reads.stats().loads == 1


async def test_a_miss_loads_fills_and_the_next_read_hits(cache: FakeCache) -> None:
    reads = ReadThrough(cache, ttl_jitter=0.1, rng=lambda: 0.5)
    load = CountingLoader()
    assert await reads.get(KEY, load) == b"v1"
    await reads.drain(1.0)
    assert await reads.get(KEY, load) == b"v1"
    assert load.calls == 1
    assert cache.fill_ttls == [pytest.approx(TTL * 1.05)]  # jittered
    stats = reads.stats()
    assert (stats.hits, stats.misses, stats.loads, stats.fills_done) == (1, 1, 1, 1)
    assert (stats.pending_fills, stats.flights) == (0, 0)


async def test_concurrent_misses_share_one_load(cache: FakeCache) -> None:
    reads = ReadThrough(cache)
    gate = asyncio.Event()
    load = CountingLoader(gate=gate)
    readers = [asyncio.create_task(reads.get(KEY, load)) for _ in range(100)]
    await settle(lambda: reads.stats().misses == 100)
    gate.set()
    assert await asyncio.gather(*readers) == [b"v1"] * 100
    assert load.calls == 1
    assert reads.stats().coalesced == 99
    await reads.drain(1.0)
    assert reads.stats().fills_done == 1


async def test_a_reader_that_saw_a_newer_generation_starts_its_own_load(cache: FakeCache) -> None:
    reads = ReadThrough(cache)
    gate = asyncio.Event()
    old = CountingLoader(b"v1", gate=gate)
    first = asyncio.create_task(reads.get(KEY, old))
    await settle(lambda: old.calls == 1)
    cache.invalidate(KEY)  # a write came in while the first load was in flight
    new = CountingLoader(b"v2")
    assert await reads.get(KEY, new) == b"v2"  # not the first flight's (maybe older) result
    gate.set()
    assert await first == b"v1"
    assert (old.calls, new.calls, reads.stats().coalesced) == (1, 1, 0)
    await reads.drain(1.0)
    assert reads.stats().fills_stale_rejected == 1  # the old flight's fill
    assert await reads.get(KEY, CountingLoader(b"never")) == b"v2"


async def test_the_loader_error_reaches_every_reader_and_the_flight_ends(cache: FakeCache) -> None:
    reads = ReadThrough(cache)
    gate = asyncio.Event()
    load = CountingLoader(gate=gate)
    load.error = LookupError("database down")
    readers = [asyncio.create_task(reads.get(KEY, load)) for _ in range(3)]
    await settle(lambda: reads.stats().misses == 3)
    gate.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(result, LookupError) for result in results)
    assert reads.stats().flights == 0
    load.error = None
    assert await reads.get(KEY, load) == b"v1"  # a new flight
    assert load.calls == 2


async def test_a_cancelled_reader_does_not_cancel_the_load_for_the_others(
    cache: FakeCache,
) -> None:
    reads = ReadThrough(cache)
    gate = asyncio.Event()
    load = CountingLoader(gate=gate)
    leader = asyncio.create_task(reads.get(KEY, load))
    follower = asyncio.create_task(reads.get(KEY, load))
    await settle(lambda: reads.stats().misses == 2)
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    gate.set()
    assert await follower == b"v1"
    assert load.calls == 1


async def test_a_cache_error_loads_alone_and_fills_nothing(cache: FakeCache) -> None:
    reads = ReadThrough(cache)
    cache.read_error = CacheTimeout("GET on read: deadline of 100ms expired")
    gate = asyncio.Event()
    load = CountingLoader(gate=gate)
    readers = [asyncio.create_task(reads.get(KEY, load)) for _ in range(3)]
    await settle(lambda: load.calls == 3)  # no coalescing without a generation
    gate.set()
    assert await asyncio.gather(*readers) == [b"v1"] * 3
    await reads.drain(1.0)
    stats = reads.stats()
    assert (stats.cache_errors, stats.loads, stats.fills_done, stats.coalesced) == (3, 3, 0, 0)
    assert cache.values == {}


async def test_without_a_generation_a_load_is_shared_only_just_after_it_began(
    cache: FakeCache,
) -> None:
    """Redis cannot say the generation, and the database is slow: a reader who comes a window
    after a load began may have seen another process's write since; it gets a load of its own,
    not the older one's answer."""
    ticks = SetClock()
    reads = ReadThrough(cache, local_writes=lambda: 0, monotonic=ticks)
    cache.read_error = CacheTimeout("GET on read: deadline of 100ms expired")
    gate = asyncio.Event()
    old = CountingLoader(b"v1", gate=gate)
    first = asyncio.create_task(reads.get(KEY, old))
    await settle(lambda: old.calls == 1)
    ticks.now = UNGUARDED_JOIN_WINDOW / 2
    joined = asyncio.create_task(reads.get(KEY, CountingLoader(b"never")))
    await settle(lambda: reads.stats().coalesced == 1)  # within the window: shared
    ticks.now = UNGUARDED_JOIN_WINDOW * 1.01  # the database has v2 by now
    new = CountingLoader(b"v2")
    late = asyncio.create_task(reads.get(KEY, new))
    await settle(late.done)  # while the first load still waits: not joined to it
    assert late.result() == b"v2"
    gate.set()
    assert await asyncio.gather(first, joined) == [b"v1", b"v1"]
    await reads.drain(1.0)
    stats = reads.stats()
    assert (old.calls, new.calls, stats.coalesced, stats.fills_done) == (1, 1, 1, 0)
    assert cache.values == {}


async def test_without_a_generation_a_read_after_a_local_write_loads_anew(
    cache: FakeCache,
) -> None:
    writes = [0]
    reads = ReadThrough(cache, local_writes=lambda: writes[0], monotonic=SetClock())
    cache.read_error = CacheTimeout("GET on read: deadline of 100ms expired")
    gate = asyncio.Event()
    old = CountingLoader(b"v1", gate=gate)
    first = asyncio.create_task(reads.get(KEY, old))
    await settle(lambda: old.calls == 1)
    writes[0] += 1  # this process committed a write, which has returned to its client
    late = asyncio.create_task(reads.get(KEY, CountingLoader(b"v2")))  # in the same window
    await settle(late.done)
    assert late.result() == b"v2"
    gate.set()
    assert await first == b"v1"
    assert reads.stats().coalesced == 0


async def test_a_pending_invalidation_bypasses_the_cache_entirely(cache: FakeCache) -> None:
    pending = {KEY}
    reads = ReadThrough(cache, bypass=pending.__contains__)
    cache.values[KEY.key] = (0, b"stale")
    assert await reads.get(KEY, CountingLoader(b"fresh")) == b"fresh"
    await reads.drain(1.0)
    assert cache.reads == 0
    assert cache.values[KEY.key] == (0, b"stale")  # not refilled either
    assert reads.stats().bypassed == 1


async def test_an_invalidation_pending_by_fill_time_stops_the_fill(cache: FakeCache) -> None:
    pending: set[GuardedKey] = set()
    reads = ReadThrough(cache, bypass=pending.__contains__)
    gate = asyncio.Event()
    reader = asyncio.create_task(reads.get(KEY, CountingLoader(gate=gate)))
    await settle(lambda: reads.stats().misses == 1)
    pending.add(KEY)  # the write's invalidation failed meanwhile
    gate.set()
    assert await reader == b"v1"
    await reads.drain(1.0)
    assert reads.stats().fills_bypassed == 1
    assert cache.values == {}


async def test_when_the_fill_bound_is_reached_fills_are_skipped_not_waited_for(
    cache: FakeCache,
) -> None:
    reads = ReadThrough(cache, max_pending_fills=2)
    cache.fill_gate = asyncio.Event()  # fills hang until released
    for number in range(3):
        async with asyncio.timeout(1.0):  # never blocked by the pending fills
            await reads.get(guarded("thing", str(number)), CountingLoader())
    stats = reads.stats()
    assert (stats.pending_fills, stats.fills_skipped) == (2, 1)
    cache.fill_gate.set()
    await reads.drain(1.0)
    assert reads.stats().fills_done == 2


async def test_a_failed_fill_is_logged_and_counted_never_raised(
    cache: FakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    reads = ReadThrough(cache)
    events: list[FillEvent] = []
    reads.subscribe(events.append)
    cache.fill_error = CacheUnavailable("EVALSHA on write (redis://:***@redis:6379/0): refused")
    with caplog.at_level(logging.WARNING, logger="postal.cache.fill"):
        assert await reads.get(KEY, CountingLoader()) == b"v1"
        await reads.drain(1.0)
    assert reads.stats().fills_failed == 1
    assert [event.outcome for event in events] == [FillOutcome.FAILED]
    (record,) = caplog.records
    assert record.getMessage().startswith("cache fill failed: namespace=thing error=EVALSHA")
    assert "{1}" not in record.getMessage()  # the namespace, not the key


async def test_a_non_positive_ttl_means_do_not_cache(cache: FakeCache) -> None:
    reads = ReadThrough(cache)

    async def load() -> tuple[bytes, float]:
        return b"volatile", 0.0

    assert await reads.get(KEY, load) == b"volatile"
    await reads.drain(1.0)
    assert reads.stats().pending_fills == 0
    assert cache.values == {}


async def test_drain_cancels_what_is_still_pending_after_its_timeout(cache: FakeCache) -> None:
    reads = ReadThrough(cache)
    cache.fill_gate = asyncio.Event()  # never set
    load: Loader = CountingLoader()
    await reads.get(KEY, load)
    assert reads.stats().pending_fills == 1
    async with asyncio.timeout(1.0):
        await reads.drain(0.05)
    assert reads.stats().pending_fills == 0
    assert reads.stats().fills_done == 0
