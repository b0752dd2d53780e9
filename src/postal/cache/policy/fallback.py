"""Read-through with fallback: cache hit, else one shared load, then a guarded background fill.

    reads = ReadThrough(cache, max_pending_fills=1000, bypass=invalidator.is_pending)
    payload = await reads.get(guarded("post", "42"), load)   # load() -> (payload, ttl seconds)

1. `bypass(key)`: an invalidation of this key has not reached Redis yet, so what Redis holds may
   be stale: load (as in point 4), and neither read nor fill the cache.
2. With a near cache (`near`) that is usable, an entry in this process's memory is returned at
   once; otherwise its sequence is taken, and a Redis hit below is stored there if nothing was
   invalidated meanwhile (see `near`).
   Read value and generation in one round trip (GET deadline). A hit returns the stored bytes.
   A GET that timed out only because this process's loop was behind is asked once more.
   With `early_refresh`, every hit (from memory or from Redis) may also start a refresh of the
   key in the background, as its expiry nears (`refresh`); the hit is returned all the same.
3. A miss loads, once per (key, generation) in this process however many readers miss together
   (single-flight), and schedules a fill in the background, bounded: when `max_pending_fills`
   are pending the fill is skipped, never waited for. The fill writes only if the generation is
   still the one read (`CacheClient.fill_guarded`), so a load that raced a write cannot store
   stale data.
4. A cache error, timeout or open breaker: the generation is unknown, so no fill. Loads are
   still shared, by (key, `local_writes()`): a count of this process's writes, which moves once
   a write has committed and before it returns, so nobody who arrives after one of its writes
   joins a load that began before it. Writes from other processes cannot be seen without the
   generation, so a load is joined only within UNGUARDED_JOIN_WINDOW of its start: a shared
   read is at most that much older than its reader, however long the database takes (a load
   that waits seconds for a pooled connection would otherwise answer, for seconds, readers who
   came after another process's write). Without `local_writes`, each such read loads alone.
5. The caller never sees a cache error; only the loader's own exceptions reach it.

Why hand-written: the parts exist separately, never together. async-lru coalesces concurrent
calls in one process, but caches results in process memory; dogpile.cache and aiocache's RedLock
let one caller regenerate a key while others wait. None keys the shared load by the generation it
read from Redis, and none makes the fill conditional on that generation, which is the whole point
here (the stale-fill race, see `guard`); wrapping them would mean rewriting both halves.
What is here is a dict of tasks and a set of fills, in plain asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from postal.cache.policy.events import FillEvent, FillListener, FillOutcome
from postal.cache.policy.guard import UNFILLABLE, Guarded
from postal.cache.policy.keys import GuardedKey, jittered
from postal.cache.policy.late_loop import once_more_if_late
from postal.cache.policy.near import NearCache
from postal.cache.policy.refresh import (
    EarlyRefreshConfig,
    EarlyRefresher,
    EarlyRefreshStats,
    Loader,
)
from postal.cache.transport import CacheError

logger = logging.getLogger("postal.cache.fill")

# (key, the generation read, GUARDED) or, with the generation unknown, (key, this process's
# writes so far, the UNGUARDED_JOIN_WINDOW the load began in: a count of windows, never negative)
_FlightKey = tuple[GuardedKey, int, int]
GUARDED = -1
# Point 4: how long after it began a load with no generation to go by may still be joined. It
# bounds how much older than its reader such a shared read can be; and per key and process, the
# loads to one a window (100 a second), against the thousands of reads a second of a hot key
# that sharing spares the database while Redis is away.
UNGUARDED_JOIN_WINDOW = 0.01  # seconds


class GuardedCache(Protocol):
    """What the read-through needs from `CacheClient` (a fake in unit tests)."""

    async def get_guarded(self, key: GuardedKey) -> Guarded: ...

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReadThroughStats:
    hits: int
    misses: int
    cache_errors: int  # reads that failed (timeout, unreachable, open breaker): loaded alone
    late_retries: int  # reads asked again because this process's loop, not Redis, was late
    bypassed: int  # reads sent straight to the loader because an invalidation is pending
    loads: int  # calls to a loader, whatever the reason
    coalesced: int  # misses that joined a load already in flight instead of starting one
    fills_done: int
    fills_stale_rejected: int  # the generation had moved on: correctly not written
    fills_skipped: int  # too many fills pending: not attempted (a TTL <= 0 is not counted)
    fills_bypassed: int  # an invalidation became pending between the load and the fill
    fills_failed: int
    pending_fills: int
    flights: int  # loads in flight right now
    early_refresh: EarlyRefreshStats | None  # None: early refresh off


class ReadThrough:
    """Cache-aside reads of generation-guarded keys with single-flight loads; see the module."""

    def __init__(
        self,
        cache: GuardedCache,
        *,
        max_pending_fills: int = 1000,
        ttl_jitter: float = 0.1,
        bypass: Callable[[GuardedKey], bool] | None = None,
        local_writes: Callable[[], int] | None = None,
        near: NearCache | None = None,
        early_refresh: EarlyRefreshConfig | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rng` draws the TTL jitter and the early refresh's chances; `clock` is the wall clock
        (Unix seconds) the early refresh compares the stamped expiries with; `monotonic` times
        the join window of loads with no generation (point 4)."""
        if max_pending_fills < 0:
            raise ValueError(f"max_pending_fills must not be negative, got {max_pending_fills}")
        if ttl_jitter < 0:
            raise ValueError(f"ttl_jitter must not be negative, got {ttl_jitter}")
        self._cache = cache
        self._near = near  # entries in this process's memory, served before Redis is asked
        self._max_pending_fills = max_pending_fills
        self._ttl_jitter = ttl_jitter
        self._bypass = bypass
        self._local_writes = local_writes
        self._monotonic = monotonic
        self._rng = rng
        self._refresher: EarlyRefresher | None = None
        if early_refresh is not None:
            self._refresher = EarlyRefresher(
                cache, early_refresh, bypass=bypass, ttl_jitter=ttl_jitter, rng=rng, clock=clock
            )
        self._flights: dict[_FlightKey, asyncio.Task[bytes]] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._listeners: list[FillListener] = []
        self._hits = self._misses = self._cache_errors = self._bypassed = self._late_retries = 0
        self._loads = self._coalesced = 0
        self._fill_counts = dict.fromkeys(FillOutcome, 0)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, key: GuardedKey, load: Loader) -> bytes:
        """The payload of `key`: from the cache, or from `load` (whose exceptions propagate).

        `load` returns the payload and how long it may be cached, in seconds (stretched by the
        jitter); a TTL of 0 or less means "do not cache this one".
        """
        if self._bypass is not None and self._bypass(key):
            self._bypassed += 1
            return await self._load_unguarded(key, load)
        near = self._near
        refresher = self._refresher
        sequence = -1  # not served from the near cache, and nothing to store there
        if near is not None and near.usable():
            held = near.get(key.key)
            if held is not None and held.payload is not None:  # (only hits are held)
                if refresher is not None:
                    refresher.consider(key, held, load)
                return held.payload
            sequence = near.sequence  # taken before the GET: see `near.NearCache.put`
        try:
            found = await self._read(key)
        except CacheError:
            # Without the generation no fill can be guarded, and a load already in flight cannot
            # be shown to have started after the last write this caller may have seen (it could
            # have read the database before that write committed): fill nothing, and join only
            # a load that began after this process's last write and just now (point 4).
            self._cache_errors += 1
            return await self._load_unguarded(key, load)
        if found.payload is not None:
            self._hits += 1
            if near is not None and sequence >= 0:
                near.put(key.key, key.generation_key, found, sequence, key.epoch_key)
            if refresher is not None:
                refresher.consider(key, found, load)
            return found.payload
        self._misses += 1
        generation = found.generation
        return await self._shared(
            (key, generation, GUARDED), lambda: self._load_then_fill(key, generation, load)
        )

    def _read(self, key: GuardedKey) -> Awaitable[Guarded]:
        """The guarded read, asked once more when it timed out only because this process's
        event loop was behind (`late_loop`). A second late timeout, or any other error, goes to
        the database as before."""
        return once_more_if_late(lambda: self._cache.get_guarded(key), self._count_late_retry)

    def _count_late_retry(self) -> None:
        self._late_retries += 1

    async def _load_unguarded(self, key: GuardedKey, load: Loader) -> bytes:
        """A load with no generation to go by, and no fill: shared by `local_writes()` and the
        join window if given, else alone (see the module docstring, point 4)."""
        if self._local_writes is None:
            return await self._load_alone(load)
        window = int(self._monotonic() / UNGUARDED_JOIN_WINDOW)
        flight_key = (key, self._local_writes(), window)
        return await self._shared(flight_key, lambda: self._load_alone(load))

    async def _load_alone(self, load: Loader) -> bytes:
        self._loads += 1
        payload, _ttl = await self._timed(load)
        return payload

    async def _timed(self, load: Loader) -> tuple[bytes, float]:
        """`load()`, its duration told to the early refresh (how long a recompute takes)."""
        if self._refresher is None:
            return await load()
        started = time.perf_counter()
        loaded = await load()
        self._refresher.observe_load(time.perf_counter() - started)
        return loaded

    async def _shared(self, flight_key: _FlightKey, start: Callable[[], Awaitable[bytes]]) -> bytes:
        """Join the load of `flight_key` in flight, or `start` it.

        Keyed by generation too: a reader that saw a newer generation (a write was invalidated
        after the flight began) must not get what the flight may have read before that write.
        The load runs in a task of its own, and each reader awaits it through `shield`, so a
        cancelled reader (a client gone, a request timeout) does not cancel it for the others.
        """
        flight = self._flights.get(flight_key)
        if flight is None:
            flight = asyncio.ensure_future(start())
            self._flights[flight_key] = flight
            flight.add_done_callback(lambda done: self._flight_done(flight_key, done))
        else:
            self._coalesced += 1
        return await asyncio.shield(flight)

    def _flight_done(self, flight_key: _FlightKey, flight: asyncio.Task[bytes]) -> None:
        if self._flights.get(flight_key) is flight:
            del self._flights[flight_key]
        if not flight.cancelled():
            flight.exception()  # retrieved: the readers got it; no "never retrieved" warning

    async def _load_then_fill(self, key: GuardedKey, generation: int, load: Loader) -> bytes:
        self._loads += 1
        payload, ttl = await self._timed(load)
        if ttl > 0 and generation != UNFILLABLE:  # no generation established: nothing to quote
            self._schedule_fill(key, generation, payload, ttl)
        return payload

    # -- filling -----------------------------------------------------------------------------

    def _schedule_fill(self, key: GuardedKey, generation: int, payload: bytes, ttl: float) -> None:
        """Start the fill in the background, unless too many are pending: then skip it."""
        if len(self._fills) >= self._max_pending_fills:
            self._count_fill(key, FillOutcome.SKIPPED, 0.0)
            return
        fill = asyncio.create_task(self._fill(key, generation, payload, ttl))
        self._fills.add(fill)
        fill.add_done_callback(self._fills.discard)

    async def _fill(self, key: GuardedKey, generation: int, payload: bytes, ttl: float) -> None:
        # An invalidation that failed after the load began has not bumped the generation in
        # Redis, so the guard would let this (possibly stale) payload in: do not fill.
        if self._bypass is not None and self._bypass(key):
            self._count_fill(key, FillOutcome.BYPASSED, 0.0)
            return
        started = time.perf_counter()
        try:
            written = await self._cache.fill_guarded(
                key, generation, payload, ttl=jittered(ttl, self._ttl_jitter, self._rng)
            )
        except CacheError as exc:
            # The key's namespace only: keys may hold data, the error has the masked address.
            namespace = key.key.partition(":")[0]
            logger.warning("cache fill failed: namespace=%s error=%s", namespace, exc)
            self._count_fill(key, FillOutcome.FAILED, time.perf_counter() - started)
            return
        outcome = FillOutcome.DONE if written else FillOutcome.STALE_REJECTED
        self._count_fill(key, outcome, time.perf_counter() - started)

    def _count_fill(self, key: GuardedKey, outcome: FillOutcome, duration: float) -> None:
        self._fill_counts[outcome] += 1
        if self._listeners:
            event = FillEvent(key=key.key, outcome=outcome, duration=duration)
            for listener in self._listeners:
                listener(event)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the early refreshes, the loads in flight and the
        fills they schedule (at shutdown, before the database and the cache close); cancel what
        is left then."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        if self._refresher is not None:
            await self._refresher.drain(timeout)
        while (self._fills or self._flights) and (left := give_up - loop.time()) > 0:
            await asyncio.wait({*self._fills, *self._flights.values()}, timeout=left)
        leftover = {*self._fills, *self._flights.values()}
        for fill in leftover:
            fill.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)

    # -- observability -----------------------------------------------------------------------

    def subscribe(self, listener: FillListener) -> None:
        """Call `listener` with a `FillEvent` for every fill decided (it must not block)."""
        self._listeners.append(listener)

    def stats(self) -> ReadThroughStats:
        fills = self._fill_counts
        return ReadThroughStats(
            hits=self._hits,
            misses=self._misses,
            cache_errors=self._cache_errors,
            late_retries=self._late_retries,
            bypassed=self._bypassed,
            loads=self._loads,
            coalesced=self._coalesced,
            fills_done=fills[FillOutcome.DONE],
            fills_stale_rejected=fills[FillOutcome.STALE_REJECTED],
            fills_skipped=fills[FillOutcome.SKIPPED],
            fills_bypassed=fills[FillOutcome.BYPASSED],
            fills_failed=fills[FillOutcome.FAILED],
            # Not len(): a finished fill leaves the set in a done callback, a loop turn later.
            pending_fills=sum(1 for fill in self._fills if not fill.done()),
            flights=len(self._flights),
            early_refresh=None if self._refresher is None else self._refresher.stats(),
        )

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<ReadThrough hits={stats.hits} misses={stats.misses} loads={stats.loads}"
            f" pending_fills={stats.pending_fills}>"
        )
