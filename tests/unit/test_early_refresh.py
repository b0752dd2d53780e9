"""Early refresh (XFetch), pure logic: the decision with an injected random draw and clock, then
the refresher and the read-through over an in-memory fake (single-flight, the in-flight bound,
outcomes, errors, drain, the near cache's hits). The real thing, on Redis and a database, is in
tests/integration/test_early_refresh.py."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable

import pytest

from postal.cache import (
    CacheUnavailable,
    EarlyRefreshConfig,
    EarlyRefresher,
    Guarded,
    GuardedKey,
    NearCache,
    ReadThrough,
    guarded,
    refresh_due,
)
from tests.support.clock import SetClock
from tests.support.loop import spin_until

KEY = guarded("post", "1")
NOW = 1_700_000_000.0  # the injected wall clock, Unix seconds
TTL = 300.0
START = 90_001  # where the fake's generation counters start (Redis's start at random, never 0)


# -- the decision ----------------------------------------------------------------------------------


def test_due_exactly_when_now_minus_delta_beta_ln_rand_reaches_the_expiry() -> None:
    # One second left, delta * beta = 1 s: due when -ln(rand) >= 1, i.e. rand <= 1/e (0.3679).
    due = [
        refresh_due(now=NOW, expires_at=NOW + 1, delta=1.0, beta=1.0, rand=rand)
        for rand in (0.36, 0.3678, 0.3680, 0.5, 0.99)
    ]
    assert due == [True, True, False, False, False]
    # beta doubles the reach: now due when rand <= e^-0.5 (0.6065)
    assert refresh_due(now=NOW, expires_at=NOW + 1, delta=1.0, beta=2.0, rand=0.6)
    assert not refresh_due(now=NOW, expires_at=NOW + 1, delta=1.0, beta=2.0, rand=0.61)


def test_a_zero_draw_is_the_earliest_and_a_passed_expiry_is_always_due() -> None:
    assert refresh_due(now=NOW, expires_at=NOW + 1e9, delta=0.1, beta=1.0, rand=0.0)
    assert refresh_due(now=NOW, expires_at=NOW, delta=0.1, beta=1.0, rand=0.999999)
    assert refresh_due(now=NOW, expires_at=NOW - 5, delta=0.0, beta=1.0, rand=0.999999)
    assert not refresh_due(now=NOW, expires_at=NOW + 0.001, delta=0.0, beta=1.0, rand=1e-300)


def test_the_chance_of_a_refresh_is_exp_of_minus_gap_over_delta_beta() -> None:
    draws = random.Random(20150801)  # seeded: the same draws on every run
    for gap in (0.05, 0.1, 0.3):
        due = sum(
            refresh_due(now=NOW, expires_at=NOW + gap, delta=0.1, beta=1.0, rand=draws.random())
            for _ in range(100_000)
        )
        assert due / 100_000 == pytest.approx(math.exp(-gap / 0.1), abs=0.005)


@pytest.mark.parametrize(
    "config",
    [
        {"beta": 0.0},
        {"beta": -1.0},
        {"min_delta": -0.1},
        {"max_in_flight": 0},
    ],
)
def test_a_config_out_of_bounds_is_refused(config: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"beta|min_delta|max_in_flight"):
        EarlyRefreshConfig(**config)  # type: ignore[arg-type]


# -- the refresher, over a fake -------------------------------------------------------------------


class Draws:
    """The injected random: `value` every time, counting the draws."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.drawn = 0

    def __call__(self) -> float:
        self.drawn += 1
        return self.value


class FakeCache:
    """Values by key with their generation and expiry (stamped from `clock` at the fill, as the
    guard stamps them), counters by generation key; the fill is guarded as the script is."""

    def __init__(self, clock: SetClock) -> None:
        self.clock = clock
        self.values: dict[str, tuple[int, bytes, float]] = {}
        self.generations: dict[str, int] = {}
        self.fills: list[tuple[str, int, bytes, float]] = []
        self.fill_error: Exception | None = None

    async def get_guarded(self, key: GuardedKey) -> Guarded:
        await asyncio.sleep(0)
        generation = self.generations.get(key.generation_key, START)
        stored = self.values.get(key.key)
        if stored is None or stored[0] != generation:
            return Guarded(None, generation)
        return Guarded(stored[1], generation, stored[2])

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool:
        await asyncio.sleep(0)
        if self.fill_error is not None:
            raise self.fill_error
        self.fills.append((key.key, generation, payload, ttl))
        if self.generations.get(key.generation_key, START) != generation:
            return False
        self.values[key.key] = (generation, payload, self.clock() + ttl)
        return True

    def invalidate(self, key: GuardedKey) -> None:
        self.generations[key.generation_key] = self.generations.get(key.generation_key, START) + 1
        self.values.pop(key.key, None)


class Database:
    """A loader of `content`; with `hold` set, loads wait for `release` after reading."""

    def __init__(self, content: bytes = b"v2", ttl: float = TTL) -> None:
        self.content = content
        self.ttl = ttl
        self.loads = 0
        self.hold = False
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def load(self) -> tuple[bytes, float]:
        self.loads += 1
        content = self.content
        if self.hold:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return content, self.ttl


def refresher(
    cache: FakeCache,
    draws: Draws,
    *,
    bypass: set[GuardedKey] | None = None,
    **config: float,
) -> EarlyRefresher:
    pending = bypass if bypass is not None else set()
    return EarlyRefresher(
        cache,
        EarlyRefreshConfig(**config),  # type: ignore[arg-type]
        bypass=pending.__contains__,
        ttl_jitter=0.0,
        rng=draws,
        clock=cache.clock,
    )


def near_expiry(generation: int = START, left: float = 0.05, payload: bytes = b"v1") -> Guarded:
    """A hit whose entry expires `left` seconds after NOW."""
    return Guarded(payload, generation, NOW + left)


async def settle(check: Callable[[], bool]) -> None:
    await spin_until(check, rounds=1000)


async def test_far_from_its_expiry_a_hit_draws_nothing_and_starts_nothing() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)  # a draw of 0 would always refresh
    refreshes = refresher(cache, draws)  # horizon: 40 * beta * 100 ms = 4 s
    database = Database()
    refreshes.consider(KEY, near_expiry(left=4.01), database.load)
    refreshes.consider(KEY, Guarded(b"v1", START), database.load)  # stamped without an expiry
    refreshes.consider(KEY, near_expiry(generation=0, left=0.0), database.load)  # no counter
    assert draws.drawn == 0
    assert refreshes.stats().started == 0
    refreshes.consider(KEY, near_expiry(left=3.99), database.load)
    assert draws.drawn == 1
    assert refreshes.stats().started == 1
    await refreshes.drain(1.0)


async def test_a_refresh_loads_once_and_fills_quoting_the_generation_seen() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.5)  # due within 69 ms of the expiry
    refreshes = refresher(cache, draws)
    database = Database(b"v2")
    refreshes.consider(KEY, near_expiry(left=0.1), database.load)  # 100 ms left: not yet
    assert refreshes.stats().started == 0
    database.hold = True
    for _ in range(10):  # readers keep finding it, 50 ms left: due, but one refresh at a time
        refreshes.consider(KEY, near_expiry(left=0.05), database.load)
    await settle(lambda: database.loads == 1)
    assert refreshes.stats().in_flight == 1
    database.release.set()
    await refreshes.drain(1.0)
    assert cache.fills == [(KEY.key, START, b"v2", TTL)]
    assert cache.values[KEY.key] == (START, b"v2", NOW + TTL)  # its expiry moved forward
    stats = refreshes.stats()
    assert (stats.started, stats.refreshed, stats.in_flight, database.loads) == (1, 1, 0, 1)


async def test_an_invalidation_during_the_refresh_wins() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)
    refreshes = refresher(cache, draws)
    database = Database(b"old")
    database.hold = True
    refreshes.consider(KEY, near_expiry(), database.load)
    await settle(lambda: database.loads == 1)
    cache.invalidate(KEY)  # a write committed and invalidated while the refresh was loading
    database.release.set()
    await refreshes.drain(1.0)
    assert KEY.key not in cache.values
    assert refreshes.stats().stale_rejected == 1


async def test_past_the_bound_refreshes_are_dropped_not_queued() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)
    refreshes = refresher(cache, draws, max_in_flight=2)
    database = Database()
    database.hold = True
    keys = [guarded("post", str(n)) for n in range(5)]
    for key in keys:
        refreshes.consider(key, near_expiry(), database.load)
    await settle(lambda: database.loads == 2)
    stats = refreshes.stats()
    assert (stats.started, stats.in_flight, stats.dropped) == (2, 2, 3)
    database.release.set()
    await refreshes.drain(1.0)
    assert (refreshes.stats().refreshed, database.loads) == (2, 2)
    refreshes.consider(keys[4], near_expiry(), database.load)  # room again: started
    await refreshes.drain(1.0)
    assert refreshes.stats().refreshed == 3


async def test_failures_are_logged_and_counted_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)
    refreshes = refresher(cache, draws)
    database = Database()
    database.error = ConnectionRefusedError("database down")
    with caplog.at_level(logging.WARNING, logger="postal.cache.refresh"):
        refreshes.consider(KEY, near_expiry(), database.load)
        await refreshes.drain(1.0)
        database.error = None
        cache.fill_error = CacheUnavailable("redis down")
        refreshes.consider(KEY, near_expiry(), database.load)
        await refreshes.drain(1.0)
    assert refreshes.stats().failed == 2
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "early refresh failed: namespace=post error=ConnectionRefusedError: database down",
        "early refresh failed: namespace=post error=CacheUnavailable: redis down",
    ]


async def test_a_pending_invalidation_or_an_uncacheable_load_fills_nothing() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)
    pending: set[GuardedKey] = set()
    refreshes = refresher(cache, draws, bypass=pending)
    pending.add(KEY)  # an invalidation of the key failed here and is being retried
    refreshes.consider(KEY, near_expiry(), Database().load)
    await refreshes.drain(1.0)
    refreshes.consider(KEY, near_expiry(), Database(ttl=0).load)
    await refreshes.drain(1.0)
    stats = refreshes.stats()
    assert (stats.bypassed, stats.uncached, cache.fills) == (1, 1, [])


async def test_drain_cancels_what_is_still_running_when_time_is_up() -> None:
    cache, draws = FakeCache(SetClock(NOW)), Draws(0.0)
    refreshes = refresher(cache, draws)
    database = Database()
    database.hold = True
    refreshes.consider(KEY, near_expiry(), database.load)
    await settle(lambda: database.loads == 1)
    await refreshes.drain(0.0)
    stats = refreshes.stats()
    assert (stats.in_flight, stats.refreshed, stats.failed, cache.fills) == (0, 0, 0, [])


def test_delta_follows_the_mean_load_time_above_its_floor() -> None:
    refreshes = refresher(FakeCache(SetClock(NOW)), Draws(0.5), min_delta=0.1)
    assert refreshes.delta == 0.1  # nothing loaded yet: the floor
    refreshes.observe_load(0.002)  # a primary-key lookup: below the floor
    assert refreshes.delta == 0.1
    refreshes.observe_load(2.0)  # the database got slow: 0.002 + 0.2 * (2.0 - 0.002)
    assert refreshes.delta == pytest.approx(0.4016)
    for _ in range(50):
        refreshes.observe_load(2.0)
    assert refreshes.delta == pytest.approx(2.0, rel=1e-3)
    unfloored = refresher(FakeCache(SetClock(NOW)), Draws(0.5), min_delta=0.0)
    unfloored.observe_load(0.002)
    assert unfloored.delta == 0.002


# -- through the read-through ---------------------------------------------------------------------


class LiveTracking:
    live = True

    def catch_up(self) -> bool:
        return True


async def test_a_hit_near_its_expiry_answers_at_once_and_refreshes_behind() -> None:
    clock = SetClock(NOW)
    cache = FakeCache(clock)
    draws = Draws(0.5)
    reads = ReadThrough(
        cache, ttl_jitter=0.0, early_refresh=EarlyRefreshConfig(), rng=draws, clock=clock
    )
    database = Database(b"v1")
    assert await reads.get(KEY, database.load) == b"v1"  # a miss: loaded and filled
    await reads.drain(1.0)
    clock.now += TTL - 0.05  # 50 ms before the entry expires
    database.content = b"v1 again"
    database.hold = True
    assert await reads.get(KEY, database.load) == b"v1"  # the cached bytes, while it loads
    await settle(lambda: database.loads == 2)
    database.release.set()
    await reads.drain(1.0)
    assert cache.values[KEY.key] == (START, b"v1 again", clock.now + TTL)
    stats = reads.stats()
    assert (stats.hits, stats.misses, stats.loads) == (1, 1, 1)  # the refresh is not a read's
    assert stats.early_refresh is not None
    assert (stats.early_refresh.started, stats.early_refresh.refreshed) == (1, 1)


async def test_a_hit_from_the_near_cache_refreshes_the_redis_entry_too() -> None:
    clock = SetClock(NOW)
    cache = FakeCache(clock)
    near = NearCache(key_prefix="p:", max_bytes=1 << 20, ttl=10.0, clock=lambda: 0.0)
    near.tracking = LiveTracking()  # type: ignore[assignment]
    draws = Draws(0.5)
    reads = ReadThrough(
        cache,
        ttl_jitter=0.0,
        near=near,
        early_refresh=EarlyRefreshConfig(),
        rng=draws,
        clock=clock,
    )
    database = Database(b"v1")
    assert await reads.get(KEY, database.load) == b"v1"  # miss
    await reads.drain(1.0)
    assert await reads.get(KEY, database.load) == b"v1"  # Redis hit, now held in memory
    clock.now += TTL - 0.05
    reads_before = reads.stats().hits
    assert await reads.get(KEY, database.load) == b"v1"  # from memory: Redis not asked
    assert (near.stats().hits, reads.stats().hits) == (1, reads_before)
    await reads.drain(1.0)
    assert database.loads == 2
    stats = reads.stats().early_refresh
    assert stats is not None
    assert stats.refreshed == 1


async def test_off_no_hit_is_ever_refreshed_early() -> None:
    clock = SetClock(NOW)
    cache = FakeCache(clock)
    reads = ReadThrough(cache, ttl_jitter=0.0, rng=Draws(0.0), clock=clock)
    database = Database(b"v1")
    await reads.get(KEY, database.load)
    await reads.drain(1.0)
    clock.now += TTL - 0.001
    assert await reads.get(KEY, database.load) == b"v1"
    await reads.drain(1.0)
    assert (database.loads, reads.stats().early_refresh) == (1, None)
