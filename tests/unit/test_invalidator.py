"""The Invalidator's bookkeeping, retries, backoff and give-up, on a fake clock and a fake cache."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from postal.cache import CacheUnavailable, GuardedKey, Invalidator, all_epoch_keys, guarded
from postal.cache.policy.invalidation import RETRY_BATCH
from tests.support.loop import spin_until

POST = guarded("post", "1")
OTHER = guarded("post", "2")
PAGE = GuardedKey("list:{all}:first", "list:{all}:gen")
GIVE_UP_AFTER = 10.0


class FakeCache:
    """Fails while `down` (or on the calls numbered in `failing`); calls numbered in `gates` wait
    for that event first. Records what reached "Redis"."""

    def __init__(self) -> None:
        self.down = False
        self.failing: set[int] = set()
        self.gates: dict[int, asyncio.Event] = {}
        self.calls = 0
        self.invalidated: list[tuple[list[GuardedKey], list[str]]] = []

    async def invalidate(self, keys: Sequence[GuardedKey], generations: Sequence[str] = ()) -> None:
        self.calls += 1
        number = self.calls
        if number in self.gates:
            await self.gates[number].wait()
        if self.down or number in self.failing:
            raise CacheUnavailable("PIPELINE on write (redis://redis:6379/0): refused")
        self.invalidated.append((list(keys), list(generations)))


class FakeTime:
    """A clock that only the fake sleep moves; it records each sleep. While `frozen`, sleeps
    wait (so the background retrier stays out of the way) until `thaw()`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._running = asyncio.Event()
        self._running.set()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self._running.wait()
        self.now += seconds
        await asyncio.sleep(0)

    def freeze(self) -> None:
        self._running.clear()

    def thaw(self) -> None:
        self._running.set()


async def settle(check: Callable[[], bool]) -> None:
    await spin_until(check, rounds=10_000)


@pytest.fixture
def cache() -> FakeCache:
    return FakeCache()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def invalidator(cache: FakeCache, fake_time: FakeTime) -> AsyncIterator[Invalidator]:
    made = Invalidator(
        cache,
        give_up_after=GIVE_UP_AFTER,
        retry_interval=0.2,
        max_retry_interval=1.0,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    yield made
    await made.aclose()


async def test_an_invalidation_that_reaches_redis_leaves_nothing_pending(
    invalidator: Invalidator, cache: FakeCache
) -> None:
    assert await invalidator.invalidate([POST], ["list:{all}:gen"])
    assert cache.invalidated == [([POST], ["list:{all}:gen"])]
    assert not invalidator.is_pending(POST)
    assert invalidator.stats().done == 1


async def test_a_failure_is_logged_pending_and_retried_with_backoff_until_it_lands(
    invalidator: Invalidator,
    cache: FakeCache,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache.down = True
    with caplog.at_level(logging.WARNING, logger="postal.cache.invalidation"):
        assert not await invalidator.invalidate([POST])
    assert "cache invalidation failed, will retry: keys=1" in caplog.records[0].getMessage()
    assert invalidator.is_pending(POST)
    assert not invalidator.is_pending(OTHER)
    await settle(lambda: len(fake_time.sleeps) >= 5)
    assert fake_time.sleeps[:5] == [0.2, 0.4, 0.8, 1.0, 1.0]  # doubling, capped
    cache.down = False
    await settle(lambda: not invalidator.is_pending(POST))
    assert cache.invalidated[-1] == ([POST], [])
    stats = invalidator.stats()
    assert (stats.failed, stats.retried, stats.given_up, stats.pending_keys) == (1, 1, 0, 0)
    assert stats.retries >= 5


REQUEST = contextvars.ContextVar("request", default="none")


async def test_the_retrier_does_not_run_in_the_failing_requests_context(
    invalidator: Invalidator, cache: FakeCache
) -> None:
    """It outlives that request and retries other requests' keys: its logs must not carry the
    first request's id (a context variable, as the request-id middleware sets)."""
    seen: list[str] = []
    original = cache.invalidate

    async def recording(keys: Sequence[GuardedKey], generations: Sequence[str] = ()) -> None:
        seen.append(REQUEST.get())
        await original(keys, generations)

    cache.invalidate = recording  # type: ignore[method-assign]
    cache.down = True
    REQUEST.set("request-1")
    assert not await invalidator.invalidate([POST])
    cache.down = False
    await settle(lambda: not invalidator.is_pending(POST))
    assert seen[0] == "request-1"  # the request's own attempt
    assert set(seen[1:]) == {"none"}  # the retrier's (at least one retry ran)


async def test_a_pending_bare_generation_covers_every_key_it_guards(
    invalidator: Invalidator, cache: FakeCache
) -> None:
    cache.down = True
    assert not await invalidator.invalidate([], ["list:{all}:gen"])
    assert invalidator.is_pending(PAGE)
    assert invalidator.is_pending(GuardedKey("list:{all}:10:first", "list:{all}:gen"))
    assert not invalidator.is_pending(POST)
    assert invalidator.stats().pending_generations == 1


async def test_gives_up_after_the_deadline_and_a_later_failure_refreshes_it(
    invalidator: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    cache.down = True
    await invalidator.invalidate([POST, OTHER])
    await settle(lambda: fake_time.now >= GIVE_UP_AFTER / 2)
    await invalidator.invalidate([OTHER])  # failed again: OTHER's deadline moves on
    await settle(lambda: not invalidator.is_pending(POST))
    assert fake_time.now >= GIVE_UP_AFTER
    assert invalidator.is_pending(OTHER)
    await settle(lambda: not invalidator.is_pending(OTHER))
    assert fake_time.now >= GIVE_UP_AFTER * 1.5
    stats = invalidator.stats()
    assert (stats.given_up, stats.retried, stats.pending_keys) == (2, 0, 0)


async def test_a_later_success_clears_what_failed_before_it_started(
    invalidator: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    fake_time.freeze()  # no retry: only the second invalidation can clear it
    cache.down = True
    assert not await invalidator.invalidate([POST])
    cache.down = False
    assert await invalidator.invalidate([POST])
    assert not invalidator.is_pending(POST)
    assert invalidator.stats().retried == 0


async def test_a_success_does_not_clear_a_failure_that_came_during_it(
    invalidator: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    fake_time.freeze()
    cache.gates[1] = asyncio.Event()
    cache.failing.add(2)
    succeeding = asyncio.create_task(invalidator.invalidate([POST]))
    await settle(lambda: cache.calls == 1)
    # Meanwhile another write's invalidation of the same key fails. That write may have committed
    # after the first invalidation's bump reached Redis, so that bump does not cover it.
    assert not await invalidator.invalidate([POST])
    cache.gates[1].set()
    assert await succeeding
    assert invalidator.is_pending(POST)
    fake_time.thaw()
    await settle(lambda: not invalidator.is_pending(POST))  # the retry covers it
    assert invalidator.stats().retried == 1


async def test_aclose_stops_retrying_after_one_last_attempt(
    cache: FakeCache, fake_time: FakeTime
) -> None:
    invalidator = Invalidator(
        cache, give_up_after=GIVE_UP_AFTER, clock=fake_time.clock, sleep=fake_time.sleep
    )
    fake_time.freeze()
    cache.down = True
    await invalidator.invalidate([POST])
    cache.down = False
    await invalidator.aclose()
    assert cache.calls == 2  # the failure, then the last attempt
    assert not invalidator.is_pending(POST)
    fake_time.thaw()
    for _ in range(100):
        await asyncio.sleep(0)
    assert cache.calls == 2  # no retrier left
    assert len(fake_time.sleeps) <= 1  # at most the one it was cancelled in


async def test_aclose_gives_up_at_once_when_redis_is_still_down(
    cache: FakeCache, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    invalidator = Invalidator(
        cache, give_up_after=GIVE_UP_AFTER, clock=fake_time.clock, sleep=fake_time.sleep
    )
    fake_time.freeze()
    cache.down = True
    await invalidator.invalidate([POST])
    with caplog.at_level(logging.WARNING, logger="postal.cache.invalidation"):
        await asyncio.wait_for(invalidator.aclose(), 1.0)
    assert "still pending at shutdown: keys=1" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    ("give_up_after", "retry_interval", "max_retry_interval"),
    [(0.0, 0.2, 5.0), (1.0, 0.0, 5.0), (1.0, 1.0, 0.5)],
)
def test_refuses_unusable_settings(
    give_up_after: float, retry_interval: float, max_retry_interval: float
) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Invalidator(
            FakeCache(),
            give_up_after=give_up_after,
            retry_interval=retry_interval,
            max_retry_interval=max_retry_interval,
        )


# -- bounded: past max_pending_keys, one coarse invalidation ---------------------------------------


@pytest.fixture
async def capped(cache: FakeCache, fake_time: FakeTime) -> AsyncIterator[Invalidator]:
    made = Invalidator(
        cache,
        give_up_after=GIVE_UP_AFTER,
        retry_interval=0.2,
        max_retry_interval=1.0,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        max_pending_keys=100,
    )
    yield made
    await made.aclose()


def posts(first: int, count: int) -> list[GuardedKey]:
    return [guarded("post", str(number)) for number in range(first, first + count)]


async def test_pending_keys_stay_within_the_cap(capped: Invalidator, cache: FakeCache) -> None:
    cache.down = True
    for first in range(0, 100, 10):
        await capped.invalidate(posts(first, 10))
    assert capped.stats().pending_keys == 100
    assert capped.stats().coarse == 0
    assert capped.is_pending(guarded("post", "5"))
    assert not capped.is_pending(guarded("post", "500"))


async def test_past_the_cap_every_slot_epoch_is_pending_instead_of_the_keys(
    capped: Invalidator, cache: FakeCache, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    fake_time.freeze()
    cache.down = True
    await capped.invalidate(posts(0, 60))
    with caplog.at_level(logging.WARNING, logger="postal.cache.invalidation"):
        await capped.invalidate(posts(60, 60), ["list:{all}:gen"])
    stats = capped.stats()
    assert (stats.coarse, stats.pending_keys) == (1, 0)
    assert stats.pending_generations == len(all_epoch_keys()) + 1
    assert "every cache entry will be invalidated at once" in caplog.text
    # every key, even one no write named, is bypassed until the epochs' bumps land
    assert all(capped.is_pending(key) for key in posts(10_000, 50))
    assert capped.is_pending(PAGE)


async def test_the_coarse_invalidation_is_retried_in_batches_each_epoch_once(
    capped: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    cache.down = True
    await capped.invalidate(posts(0, 150))
    cache.down = False
    await settle(lambda: capped.stats().pending_generations == 0)
    sent = [counter for keys, counters in cache.invalidated for counter in counters]
    assert sorted(sent) == sorted(all_epoch_keys())  # each once
    assert all(len(keys) + len(counters) <= RETRY_BATCH for keys, counters in cache.invalidated)
    assert not capped.is_pending(guarded("post", "3"))
    assert capped.stats().retried == len(all_epoch_keys())


async def test_a_retry_takes_the_oldest_batch_and_stops_at_what_failed_after_it_began(
    invalidator: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    fake_time.freeze()  # the retrier waits until the stage is set
    cache.down = True
    first, second = posts(0, RETRY_BATCH), posts(RETRY_BATCH, RETRY_BATCH)
    await invalidator.invalidate(first)
    await invalidator.invalidate(second)
    await invalidator.invalidate(first[:1])  # fails again: moves to the end
    cache.down = False
    gate = asyncio.Event()
    cache.gates[cache.calls + 1] = gate  # the retry's first batch waits
    fake_time.thaw()
    await settle(lambda: cache.calls == 4)
    cache.down = True  # meanwhile a write of second[0] fails: it failed after the retry began
    await invalidator.invalidate(second[:1])
    cache.down = False
    gate.set()
    await settle(lambda: invalidator.stats().pending_keys == 0)
    batches = [keys for keys, _ in cache.invalidated]
    assert batches[0] == first[1:] + second[:1]  # the oldest first, RETRY_BATCH of them
    assert batches[1] == second[1:] + first[:1]  # then the rest, in failure order
    assert batches[2] == second[:1]  # the one that failed during the retry: the next attempt


async def test_expired_entries_are_dropped_from_the_front(
    invalidator: Invalidator, cache: FakeCache, fake_time: FakeTime
) -> None:
    cache.down = True
    await invalidator.invalidate(posts(0, 3))
    await settle(lambda: fake_time.now >= GIVE_UP_AFTER / 2)
    await invalidator.invalidate(posts(0, 1))  # refreshed: moves to the end, lives longer
    await settle(lambda: invalidator.stats().pending_keys == 1)
    assert invalidator.is_pending(guarded("post", "0"))
    assert invalidator.stats().given_up == 2
