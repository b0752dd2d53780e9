"""The cache layer, seen by Prometheus: event listeners and a sampler of the cumulative stats.

The cache layer knows nothing of Prometheus (cache.events): here its events and snapshots become
metric updates.

- Per-event metrics, from listeners: operations and their latency (`CacheEvent`, one per cache
  operation: the hot path, so batched, see `observability.batching`), fills (`FillEvent`), pool
  waits (`PoolWaitEvent`), breaker changes. Each listener keeps its labelled children in a dict,
  so an event costs a dict lookup and the updates, no label formatting.
- Counts the cache keeps as running totals (pool timeouts, connections opened and closed, DNS
  lookups, invalidations) and the pool gauges are sampled from `stats()` snapshots at each
  `PostalMetrics.refresh()`: every second, before each scrape, at shutdown.
  `CumulativeCounters` turns each total into counter increments, so multiprocess sums and
  `rate()` work as for any counter.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from postal.cache.breaker import BreakerChange, BreakerState
from postal.cache.client import CacheClient
from postal.cache.events import CacheEvent, FillEvent, FillOutcome, Outcome, PoolWaitEvent
from postal.cache.fallback import ReadThrough
from postal.cache.invalidation import Invalidator
from postal.cache.pool import CloseReason
from postal.observability.batching import CounterBatch, HistogramBatch
from postal.observability.metrics import (
    BREAKER_CLOSED,
    BREAKER_HALF_OPEN,
    BREAKER_OPEN,
    DNS_OUTCOMES,
    INVALIDATION_OUTCOMES,
    LATENCY_BUCKETS,
    REPLICA_WAIT_OUTCOMES,
    PostalMetrics,
)

ROLES = ("read", "write")
BREAKER_VALUES = {
    BreakerState.CLOSED: BREAKER_CLOSED,
    BreakerState.HALF_OPEN: BREAKER_HALF_OPEN,
    BreakerState.OPEN: BREAKER_OPEN,
}


class CacheOperationMetrics:
    """A `CacheListener`: `postal_cache_operations_total` and `postal_cache_operation_seconds`."""

    def __init__(self, metrics: PostalMetrics) -> None:
        self._metrics = metrics
        self._bound: dict[tuple[str, str, Outcome], tuple[CounterBatch, HistogramBatch]] = {}
        # Series present from the start, so that rate() and alerts see a 0 before the first one.
        for outcome in Outcome:
            self._bind(("read", "GET", outcome))

    def __call__(self, event: CacheEvent) -> None:
        key = (event.role, event.command, event.outcome)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bind(key)
        count, seconds = bound
        count.inc()
        # An operation the open breaker refused did no I/O and took about nothing: timing it
        # would pull the latency percentiles down exactly while Redis is failing. It is counted
        # (outcome circuit_open), not timed.
        if event.outcome is not Outcome.CIRCUIT_OPEN:
            seconds.observe(event.duration)

    def _bind(self, key: tuple[str, str, Outcome]) -> tuple[CounterBatch, HistogramBatch]:
        role, command, outcome = key
        m = self._metrics
        bound = (
            m.batches.counter(m.cache_operations, role, command, outcome.value),
            m.batches.histogram(m.cache_operation_seconds, LATENCY_BUCKETS, role, command),
        )
        self._bound[key] = bound
        return bound


class FillMetrics:
    """A `FillListener`: `postal_cache_fills_total`."""

    def __init__(self, metrics: PostalMetrics) -> None:
        fills = metrics.cache_fills
        self._fills = {outcome: fills.labels(outcome.value) for outcome in FillOutcome}

    def __call__(self, event: FillEvent) -> None:
        self._fills[event.outcome].inc()


class PoolWaitMetrics:
    """A `PoolWaitListener`: `postal_pool_wait_seconds`."""

    def __init__(self, metrics: PostalMetrics) -> None:
        self._waits = {role: metrics.pool_wait_seconds.labels(role) for role in ROLES}

    def __call__(self, event: PoolWaitEvent) -> None:
        self._waits[event.role].observe(event.waited)


class BreakerMetrics:
    """A `BreakerListener`: `postal_cache_breaker_state`, set as the breaker changes."""

    def __init__(self, metrics: PostalMetrics) -> None:
        self._states = {role: metrics.breaker_state.labels(role) for role in ROLES}

    def __call__(self, change: BreakerChange) -> None:
        gauge = self._states.get(change.name)
        if gauge is not None:
            gauge.set(BREAKER_VALUES[change.new])

    def set(self, role: str, state: BreakerState) -> None:
        self._states[role].set(BREAKER_VALUES[state])


class CumulativeCounters:
    """Turns running totals into counter increments: `advance(counter, key, total)` adds what
    `total` grew by since the last call for `key`. A total that went down belongs to a source
    that started over, and all of it is new."""

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}

    def advance(self, counter: Any, key: Hashable, total: float) -> None:
        last = self._last.get(key, 0.0)
        grown = total - last if total >= last else total
        if grown > 0:
            counter.inc(grown)
        self._last[key] = total


class CacheSampler:
    """Samples the cache's snapshots into the pool gauges and the cumulative counters."""

    def __init__(
        self,
        metrics: PostalMetrics,
        cache: CacheClient,
        invalidator: Invalidator,
        breakers: BreakerMetrics,
    ) -> None:
        self._metrics = metrics
        self._cache = cache
        self._invalidator = invalidator
        self._breakers = breakers
        self._totals = CumulativeCounters()
        m = metrics
        self._in_use = {role: m.pool_connections.labels(role, "in_use") for role in ROLES}
        self._idle = {role: m.pool_connections.labels(role, "idle") for role in ROLES}
        self._max = {role: m.pool_max_connections.labels(role) for role in ROLES}
        self._timeouts = {role: m.pool_timeouts.labels(role) for role in ROLES}
        self._opened = {role: m.pool_opened.labels(role) for role in ROLES}
        self._closed = {
            (role, reason.value): m.pool_closed.labels(role, reason.value)
            for role in ROLES
            for reason in CloseReason
        }
        self._dns = {outcome: m.dns_lookups.labels(outcome) for outcome in DNS_OUTCOMES}
        self._replica_waits = {
            outcome: m.replica_waits.labels(outcome) for outcome in REPLICA_WAIT_OUTCOMES
        }
        self._invalidations = {
            outcome: m.cache_invalidations.labels(outcome) for outcome in INVALIDATION_OUTCOMES
        }

    def sample(self) -> None:
        totals = self._totals
        for role, pool in self._cache.stats().items():
            self._in_use[role].set(pool.in_use)
            self._idle[role].set(pool.idle)
            self._max[role].set(pool.max_size)
            totals.advance(self._timeouts[role], ("timeouts", role), pool.timeouts)
            totals.advance(self._opened[role], ("opened", role), pool.opened)
            for reason, count in pool.closed.items():
                key = (role, str(reason))
                totals.advance(self._closed[key], ("closed", *key), count)
            self._breakers.set(role, self._cache.breaker_state(role))
        dns = self._cache.dns.stats()
        for outcome in DNS_OUTCOMES:
            totals.advance(self._dns[outcome], ("dns", outcome), getattr(dns, outcome))
        waits = self._cache.replica_wait.stats()
        for outcome in REPLICA_WAIT_OUTCOMES:
            counter = self._replica_waits[outcome]
            totals.advance(counter, ("replica_wait", outcome), getattr(waits, outcome))
        invalidations = self._invalidator.stats()
        counts = {
            "done": invalidations.done,
            "failed": invalidations.failed,
            "retried": invalidations.retried,
            "given_up": invalidations.given_up,
        }
        for outcome, count in counts.items():
            totals.advance(self._invalidations[outcome], ("invalidations", outcome), count)


def instrument_cache(
    metrics: PostalMetrics, cache: CacheClient, reads: ReadThrough, invalidator: Invalidator
) -> CacheSampler:
    """Subscribe the listeners to the cache's events, and the sampler of its snapshots to
    `metrics.refresh()` (so each scrape sees this process's latest state, and the last sample,
    at `metrics.close()`, comes after the cache has closed)."""
    cache.subscribe(CacheOperationMetrics(metrics))
    reads.subscribe(FillMetrics(metrics))
    waits = PoolWaitMetrics(metrics)
    breakers = BreakerMetrics(metrics)
    cache.subscribe_pool_waits(waits)
    cache.subscribe_breakers(breakers)
    sampler = CacheSampler(metrics, cache, invalidator, breakers)
    sampler.sample()
    metrics.add_sampler(sampler.sample)
    return sampler
