"""Early refresh (XFetch): hot entries reloaded in the background before their TTL ends.

The end of a hot key's TTL would otherwise make one of its readers wait on the database (and the
others on that reader's load).

    refresher = EarlyRefresher(cache, EarlyRefreshConfig(beta=1.0), bypass=invalidator.is_pending)
    refresher.consider(key, found, load)  # on every hit; returns at once, maybe starts a refresh

The decision is XFetch (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
Stampede Prevention", VLDB 2015): a reader holding a value that expires at `expiry` refreshes it
when `now - delta * beta * ln(rand) >= expiry`, `rand` uniform in (0, 1], `delta` how long a
recompute takes, `beta` a knob (1.0 in the paper; more refreshes earlier). A read `gap` seconds
before the expiry refreshes with probability exp(-gap / (delta * beta)): next to nothing early in
the TTL, then more and more. A key read `rate` times a second reaches its expiry unrefreshed with
probability exp(-rate * delta * beta): that is what makes a key hot enough, and why `delta` has a
floor (`min_delta`, below).

- **The expiry** is stamped into the value by its fill (`guard`), so the read that finds the
  value finds when it expires, with no second command; the near cache keeps it with the entry,
  so hits served from memory decide as Redis hits do (with the near cache on, most of a hot
  key's reads never reach Redis, and only they could see the expiry coming).
- **delta** is an exponentially weighted mean of this process's load durations (every load the
  read-through times, and the refreshes'), never below `min_delta`. A primary-key lookup takes a
  millisecond or two, which would make even a key read a hundred times a second expire
  unrefreshed most of the time; the floor (100 ms by default) also covers the fill's round
  trip and the clocks of the processes involved, which are not Redis's.
- **The reader never waits for it:** it answers with what it found, and the refresh runs in a
  task of its own: load (the reader's own loader), then the guarded fill quoting the generation
  the reader saw, so an invalidation that lands meanwhile wins (the fill is rejected, as a miss's
  late fill is). One refresh per key at a time, at most `max_in_flight` per process (they hold
  database connections the requests need): past it the refresh is dropped, not queued; a read
  closer to the expiry will likely try again. A failed load or fill is logged and counted,
  never raised. `drain` waits for them at shutdown, then cancels what is left.
- Values stamped without an expiry (another version's, during a rolling upgrade) are never
  refreshed early: they expire as before. Nor is a hit read with no generation counter (a value
  an older Postal stamped under an absent counter): a reader never quotes an absent counter
  (`guard`), and only a miss creates one.

Why hand-written: the decision is one line of arithmetic, and no library refreshes early through
a fill that is conditional on the generation the reader saw (the point here: see `guard`); the
rest is a dict of tasks, as in `fallback`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from postal.cache.policy.guard import Guarded, counter_and_epoch
from postal.cache.policy.keys import GuardedKey, jittered

logger = logging.getLogger("postal.cache.refresh")

Loader = Callable[[], Awaitable[tuple[bytes, float]]]  # the payload, and its TTL in seconds

# Each new load duration's weight in the mean: the last ten or so loads count, so one slow query
# moves delta, and a database that stays slow moves it all the way within a few dozen loads.
LOAD_TIME_WEIGHT = 0.2
# Farther than this many `delta * beta` from the expiry, a refresh's chance is below e^-40
# (4e-18): the reader decides "no" without drawing a number or taking a logarithm.
HORIZON = 40.0
# What a guarded read says when the key has no generation counter: an absent counter reads as 0,
# and counters are created at a random start above it (`guard.generation_start`).
NO_GENERATION = 0  # (the counter part of a generation: `guard.counter_and_epoch`)


def refresh_due(*, now: float, expires_at: float, delta: float, beta: float, rand: float) -> bool:
    """XFetch's test: `now - delta * beta * ln(rand) >= expires_at` (see the module).

    `rand` is uniform in [0, 1), as `random.random()` draws it; 0 (whose logarithm is minus
    infinity) is the earliest draw of all, and refreshes.
    """
    if rand <= 0.0:
        return True
    return now - delta * beta * math.log(rand) >= expires_at


@dataclass(frozen=True, slots=True)
class EarlyRefreshConfig:
    """How early refreshes are decided and bounded; see the module."""

    beta: float = 1.0  # > 0: XFetch's knob, more means earlier
    min_delta: float = 0.100  # seconds: the floor under the measured load time
    max_in_flight: int = 4  # refreshes running at once in this process; past it, dropped

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be above 0, got {self.beta}")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must not be negative, got {self.min_delta}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")


class RefreshOutcome(StrEnum):
    """How a refresh that was decided on ended (the names of `EarlyRefreshStats`' counts)."""

    REFRESHED = "refreshed"  # loaded and written: the key's expiry moved forward
    STALE_REJECTED = "stale_rejected"  # an invalidation came first: the fill was refused
    BYPASSED = "bypassed"  # an invalidation of the key is pending here: not filled
    UNCACHED = "uncached"  # the loader said not to cache what it loaded (a TTL of 0)
    FAILED = "failed"  # the load or the fill failed (logged)
    DROPPED = "dropped"  # max_in_flight refreshes were running: not started


@dataclass(frozen=True, slots=True)
class EarlyRefreshStats:
    started: int
    refreshed: int
    stale_rejected: int
    bypassed: int
    uncached: int
    failed: int
    dropped: int
    in_flight: int
    delta: float  # seconds: what the decision uses now (the mean load time, or the floor)


class GuardedFiller(Protocol):
    """What a refresh needs from `CacheClient` (a fake in unit tests)."""

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool: ...


class EarlyRefresher:
    """Decides on each hit whether to refresh early, and runs the refreshes; see the module."""

    def __init__(
        self,
        cache: GuardedFiller,
        config: EarlyRefreshConfig,
        *,
        bypass: Callable[[GuardedKey], bool] | None = None,
        ttl_jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._beta = config.beta
        self._min_delta = config.min_delta
        self._max_in_flight = config.max_in_flight
        self._bypass = bypass
        self._ttl_jitter = ttl_jitter
        self._rng = rng
        self._clock = clock  # wall clock, Unix seconds: the stamped expiry is one
        self._mean_load: float | None = None
        self._delta = config.min_delta
        self._horizon = HORIZON * config.beta * config.min_delta
        self._refreshes: dict[GuardedKey, asyncio.Task[None]] = {}
        self._started = 0
        self._counts = dict.fromkeys(RefreshOutcome, 0)

    @property
    def delta(self) -> float:
        """Seconds: the mean load time, or `min_delta` when that is longer (or nothing loaded)."""
        return self._delta

    def observe_load(self, seconds: float) -> None:
        """A load (of any key) took `seconds`: fold it into the mean that delta follows."""
        mean = self._mean_load
        mean = seconds if mean is None else mean + LOAD_TIME_WEIGHT * (seconds - mean)
        self._mean_load = mean
        self._delta = max(self._min_delta, mean)
        self._horizon = HORIZON * self._beta * self._delta

    # -- the hot path ------------------------------------------------------------------------

    def consider(self, key: GuardedKey, found: Guarded, load: Loader) -> None:
        """A reader found `found` (a hit, from Redis or from memory): start a refresh of `key` in
        the background if XFetch says so. Never waits, never raises."""
        expires_at = found.expires_at
        if expires_at is None:
            return  # stamped without an expiry: see the module
        now = self._clock()
        if expires_at - now > self._horizon:
            return
        if counter_and_epoch(found.generation)[0] <= NO_GENERATION:
            return  # read with no counter: nothing a fill may quote (`guard`)
        rand = self._rng()
        if not refresh_due(
            now=now, expires_at=expires_at, delta=self._delta, beta=self._beta, rand=rand
        ):
            return
        # Only now, once due (rarely): hashing the key costs more than the arithmetic above.
        if key in self._refreshes:
            return  # one refresh of a key at a time
        if len(self._refreshes) >= self._max_in_flight:
            self._counts[RefreshOutcome.DROPPED] += 1
            return
        self._started += 1
        refresh = asyncio.ensure_future(self._refresh(key, found.generation, load))
        self._refreshes[key] = refresh
        refresh.add_done_callback(lambda done: self._refresh_done(key, done))

    # -- the refresh -------------------------------------------------------------------------

    async def _refresh(self, key: GuardedKey, generation: int, load: Loader) -> None:
        try:
            started = time.perf_counter()
            payload, ttl = await load()
            self.observe_load(time.perf_counter() - started)
            if ttl <= 0:
                self._counts[RefreshOutcome.UNCACHED] += 1
                return
            # As for a miss's fill: an invalidation that failed has not bumped the generation in
            # Redis, so the guard would let this (possibly stale) payload in.
            if self._bypass is not None and self._bypass(key):
                self._counts[RefreshOutcome.BYPASSED] += 1
                return
            ttl = jittered(ttl, self._ttl_jitter, self._rng)
            written = await self._cache.fill_guarded(key, generation, payload, ttl=ttl)
        except Exception as exc:  # the loader's or the cache's: a refresh never fails a request
            # The key's namespace only: keys may hold data.
            namespace = key.key.partition(":")[0]
            logger.warning(
                "early refresh failed: namespace=%s error=%s: %s",
                namespace,
                type(exc).__name__,
                exc,
            )
            self._counts[RefreshOutcome.FAILED] += 1
            return
        outcome = RefreshOutcome.REFRESHED if written else RefreshOutcome.STALE_REJECTED
        self._counts[outcome] += 1

    def _refresh_done(self, key: GuardedKey, refresh: asyncio.Task[None]) -> None:
        if self._refreshes.get(key) is refresh:
            del self._refreshes[key]

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the refreshes running (at shutdown, before the
        database and the cache close); cancel what is left then."""
        running = set(self._refreshes.values())
        if not running:
            return
        _, left = await asyncio.wait(running, timeout=max(0.0, timeout))
        for refresh in left:
            refresh.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> EarlyRefreshStats:
        counts = self._counts
        return EarlyRefreshStats(
            started=self._started,
            refreshed=counts[RefreshOutcome.REFRESHED],
            stale_rejected=counts[RefreshOutcome.STALE_REJECTED],
            bypassed=counts[RefreshOutcome.BYPASSED],
            uncached=counts[RefreshOutcome.UNCACHED],
            failed=counts[RefreshOutcome.FAILED],
            dropped=counts[RefreshOutcome.DROPPED],
            # Not len(): a finished refresh leaves the dict in a done callback, a turn later.
            in_flight=sum(1 for refresh in self._refreshes.values() if not refresh.done()),
            delta=self._delta,
        )
