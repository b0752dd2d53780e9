"""Invalidations that never fail the write they follow: retried in the background, and bypassed.

A write commits in the database, then invalidates (`CacheClient.invalidate`: bump the generation,
delete the value). When Redis does not take the invalidation, the write must still succeed, yet
the cache may now hold, or be about to be filled with, the old value. So the `Invalidator`:

- remembers the keys (and bare generation counters) whose bump has not reached Redis, and retries
  them in the background with an exponential backoff until it does;
- answers `is_pending(key)` in O(1), which the read-through's `bypass` calls: while the bump is
  pending this process reads that key from the database, never from the cache, and fills nothing;
- gives up `give_up_after` seconds after a key's latest failure: by then the value's TTL has made
  the invalidation moot (set it to the longest TTL, jitter included).

Other processes are not told: until the retry lands they may serve the old value, which is the
best anyone can do while Redis does not take writes. So a failure must mean that: an
invalidation that timed out only because this process's event loop was behind (a saturated
worker, `CacheTimeout.loop_behind`), not Redis, is sent once more at once, before the write
returns, as a read in that case is (`fallback`). A successful invalidation of a key clears a
pending one for it only if the failure came before that invalidation started: its bump then came
after the failed write's commit, and covers it.

Bounded. While Redis is down, every write adds its keys (a bulk import, a key a row). Past
`max_pending_keys` the keys are dropped and one coarse invalidation takes their place: every
hash slot's epoch (`keys.all_epoch_keys`, 16,384 bare counters, whatever the number of keys)
becomes pending. Once those bumps land, every value stored before them reads as a miss and every
fill quoting an older epoch is refused (`guard`), in every process, on one Redis or a cluster
(each slot's epoch lives in that slot); until they land, `is_pending` is true for every key, so
this process reads everything from the database. The price: the whole cache misses once.

The pending tables are kept in the order of their latest failure (a key that fails again moves
to the end), so a retry sends the oldest batch, then the next, without copying the table, and
stops at the first entry that failed after it began; the give-up deadline follows that order
too, so expired entries are dropped from the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from postal.cache.policy.keys import GuardedKey, all_epoch_keys
from postal.cache.policy.late_loop import once_more_if_late
from postal.cache.policy.near import NearCache
from postal.cache.transport import CacheError

logger = logging.getLogger("postal.cache.invalidation")

Item = TypeVar("Item", GuardedKey, str)
T = TypeVar("T")

RETRY_BATCH = 500  # keys (or counters) per retry pipeline, so a long outage's backlog is chunked
LAST_ATTEMPT_TIMEOUT = 1.0  # seconds `aclose()` spends on a final attempt
# Keys remembered one by one; past this, the coarse invalidation (see the module docstring).
# About 300 bytes a key: 10,000 are 3 MB, and a retry of them is 20 batches.
DEFAULT_MAX_PENDING_KEYS = 10_000


class Invalidates(Protocol):
    """What the invalidator needs from `CacheClient` (a fake in unit tests)."""

    async def invalidate(
        self, keys: Sequence[GuardedKey], generations: Sequence[str] = ()
    ) -> None: ...


@dataclass(slots=True)
class _Pending:
    failed_at: int  # the failure's sequence number (see Invalidator._failures)
    give_up_at: float  # clock time


@dataclass(frozen=True, slots=True)
class InvalidatorStats:
    done: int  # invalidate() calls that reached Redis at once
    failed: int  # invalidate() calls that did not: their keys became pending
    retries: int  # background attempts (each a pipeline of up to RETRY_BATCH items)
    retried: int  # pending keys and counters a retry then invalidated
    given_up: int  # pending keys and counters dropped after give_up_after
    late_retries: int  # sent again at once: the first timed out because this loop was behind
    coarse: int  # times too many keys were pending: every slot's epoch made pending instead
    pending_keys: int
    pending_generations: int


class Invalidator:
    """Invalidate through the cache; on failure, remember, bypass and retry. See the module."""

    def __init__(
        self,
        cache: Invalidates,
        *,
        give_up_after: float,
        retry_interval: float = 0.2,
        max_retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        near: NearCache | None = None,
        max_pending_keys: int = DEFAULT_MAX_PENDING_KEYS,
    ) -> None:
        if give_up_after <= 0 or retry_interval <= 0 or max_retry_interval < retry_interval:
            raise ValueError(
                "give_up_after and retry_interval must be positive,"
                " and max_retry_interval at least retry_interval"
            )
        if max_pending_keys < 0:
            raise ValueError(f"max_pending_keys must not be negative, got {max_pending_keys}")
        self._max_pending_keys = max_pending_keys
        self._cache = cache
        self._near = near  # this process's near cache: its own writes evict there at once
        self._give_up_after = give_up_after
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._clock = clock
        self._sleep = sleep
        self._pending_keys: dict[GuardedKey, _Pending] = {}
        self._pending_generations: dict[str, _Pending] = {}
        self._failures = 0  # sequence number of the latest failure
        self._retrier: asyncio.Task[None] | None = None
        self._closed = False
        self._done = self._failed = self._retries = self._retried = self._given_up = 0
        self._coarse = self._begun = self._late_retries = 0

    # -- the writer's side -------------------------------------------------------------------

    async def invalidate(self, keys: Sequence[GuardedKey], generations: Sequence[str] = ()) -> bool:
        """True when Redis took it; False when it is pending (logged, retried). Never raises
        CacheError."""

        async def send() -> bool:
            await self._cache.invalidate(keys, generations)
            return True

        return await self.invalidate_with(keys, generations, send) is not None

    async def invalidate_with(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str],
        send: Callable[[], Awaitable[T]],
    ) -> T | None:
        """As `invalidate`, with `send` doing it: a call that invalidates exactly `keys` and
        `generations` and returns what its caller needs (e.g. `CacheClient.invalidate` with a
        deadline of its own, returning the new generations, to warm the keys with). Its result
        (not None), or None when it failed: then the keys are pending (logged, retried)."""
        self._begun += 1
        started = self._failures
        near = self._near
        touched: list[str] = []
        if near is not None:
            touched = [*(k.key for k in keys), *(k.generation_key for k in keys), *generations]
            near.evict(touched)  # this process's next read must not be served the old entry
        try:
            result = await once_more_if_late(send, self._count_late_retry)
        except CacheError as exc:
            self._failed += 1
            logger.warning(
                "cache invalidation failed, will retry: keys=%d generations=%d error=%s",
                len(keys),
                len(generations),
                exc,
            )
            self._remember(keys, generations)
            return None
        finally:
            # Again, however it ended: nor one a read stored while Redis was being told (once
            # pending, the keys are bypassed until the retry lands).
            if near is not None:
                near.evict(touched)
        self._done += 1
        self._settle(keys, generations, started)
        return result

    def _count_late_retry(self) -> None:
        """An invalidation timed out only because this loop was behind, and is sent once more
        (`late_loop`): pending, its write would return while other processes may still serve
        the old value. Repeating an invalidation is always safe: one more bump, one more DEL."""
        self._late_retries += 1

    def begun(self) -> int:
        """How many invalidations this process has begun: one per write, once it has committed
        and before it returns. `ReadThrough(local_writes=...)` keys its loads by it when Redis
        cannot say the generation."""
        return self._begun

    def is_pending(self, key: GuardedKey) -> bool:
        """Whether an invalidation of `key`, of the generation that guards it, or of its slot's
        epoch (the coarse invalidation) has not reached Redis yet: if so, what the cache holds
        for it may be stale."""
        counters = self._pending_generations
        return (
            key in self._pending_keys or key.generation_key in counters or key.epoch_key in counters
        )

    # -- the background side -----------------------------------------------------------------

    def _remember(self, keys: Sequence[GuardedKey], generations: Sequence[str]) -> None:
        """Mark as pending, a later failure refreshing the give-up time and moving the entry to
        the end; past `max_pending_keys`, the coarse invalidation. Start the retrier."""
        self._failures += 1
        pending = _Pending(self._failures, self._clock() + self._give_up_after)
        if len(self._pending_keys) + len(keys) > self._max_pending_keys:
            self._coarse += 1
            logger.warning(
                "cache invalidations: more than %d keys pending, every cache entry will be"
                " invalidated at once instead (every slot's epoch bumped)",
                self._max_pending_keys,
            )
            self._pending_keys.clear()  # covered: the epochs' bumps come after their commits
            generations = [*generations, *all_epoch_keys()]
        else:
            _mark(self._pending_keys, keys, pending)
        _mark(self._pending_generations, generations, pending)
        if not self._closed and (self._retrier is None or self._retrier.done()):
            # A fresh context: the retrier outlives the request that started it and retries
            # other requests' keys too, so it must not carry that request's id into its logs.
            self._retrier = asyncio.create_task(
                self._retry(), name="postal-invalidation-retry", context=contextvars.Context()
            )

    def _settle(self, keys: Sequence[GuardedKey], generations: Sequence[str], started: int) -> int:
        """Forget the pending entries this success covers: those that failed before it started."""
        return _settle(self._pending_keys, keys, started) + _settle(
            self._pending_generations, generations, started
        )

    def _give_up_expired(self) -> None:
        now = self._clock()
        expired = _expire(self._pending_keys, now) + _expire(self._pending_generations, now)
        if expired:
            self._given_up += expired
            logger.warning("cache invalidation given up after retries: items=%d", expired)

    def _has_pending(self) -> bool:
        return bool(self._pending_keys or self._pending_generations)

    async def _retry(self) -> None:
        """Retry everything pending, backing off exponentially while it fails."""
        interval = self._retry_interval
        while self._has_pending():
            await self._sleep(interval)
            self._give_up_expired()
            if not self._has_pending():
                return
            if await self._attempt():
                interval = self._retry_interval
            else:
                interval = min(interval * 2, self._max_retry_interval)

    async def _attempt(self) -> bool:
        """One pass over what was pending when it began, oldest first, a batch at a time (never
        a copy of the tables); False at the first batch that fails."""
        started = self._failures
        while True:
            key_batch = _oldest(self._pending_keys, RETRY_BATCH, started)
            room = RETRY_BATCH - len(key_batch)
            generation_batch = _oldest(self._pending_generations, room, started)
            if not key_batch and not generation_batch:
                return True
            self._retries += 1
            try:
                await self._cache.invalidate(key_batch, generation_batch)
            except CacheError as exc:
                logger.info("cache invalidation retry failed: error=%s", exc)
                return False
            self._retried += self._settle(key_batch, generation_batch, started)

    async def aclose(self) -> None:
        """Stop retrying, after one last attempt bounded by LAST_ATTEMPT_TIMEOUT."""
        self._closed = True
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self._has_pending():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_ATTEMPT_TIMEOUT):
                    await self._attempt()
        if self._has_pending():
            logger.warning(
                "cache invalidations still pending at shutdown: keys=%d generations=%d",
                len(self._pending_keys),
                len(self._pending_generations),
            )

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> InvalidatorStats:
        return InvalidatorStats(
            done=self._done,
            failed=self._failed,
            retries=self._retries,
            retried=self._retried,
            given_up=self._given_up,
            late_retries=self._late_retries,
            coarse=self._coarse,
            pending_keys=len(self._pending_keys),
            pending_generations=len(self._pending_generations),
        )

    def __repr__(self) -> str:
        return (
            f"<Invalidator pending keys={len(self._pending_keys)}"
            f" generations={len(self._pending_generations)}>"
        )


def _settle(table: dict[Item, _Pending], done: Sequence[Item], started: int) -> int:
    settled = 0
    for item in done:
        pending = table.get(item)
        if pending is not None and pending.failed_at <= started:
            del table[item]
            settled += 1
    return settled


def _mark(table: dict[Item, _Pending], items: Sequence[Item], pending: _Pending) -> None:
    """Each of `items` pending as `pending`, at the end of `table`: the latest failure last."""
    for item in items:
        table.pop(item, None)
        table[item] = pending


def _oldest(table: dict[Item, _Pending], limit: int, started: int) -> list[Item]:
    """Up to `limit` items from the front of `table` that failed no later than `started`."""
    batch: list[Item] = []
    for item, pending in table.items():
        if len(batch) >= limit or pending.failed_at > started:
            break
        batch.append(item)
    return batch


def _expire(table: dict[Item, _Pending], now: float) -> int:
    """Drop the entries whose give-up time has come: at the front, in failure order."""
    expired = 0
    while table:
        item, pending = next(iter(table.items()))
        if pending.give_up_at > now:
            break
        del table[item]
        expired += 1
    return expired
