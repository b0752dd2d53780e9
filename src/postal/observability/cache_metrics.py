"""The cache layer, seen by Prometheus: event listeners and a sampler of the cumulative stats.

The cache layer knows nothing of Prometheus (cache.transport.events): here its events and
snapshots become metric updates.

- Per-event metrics, from listeners: operations and their latency (`CacheEvent`, one per cache
  operation: the hot path, so batched, see `observability.batching`), fills (`FillEvent`), pool
  waits (`PoolWaitEvent`), breaker changes. Each listener keeps its labelled children in a dict,
  so an event costs a dict lookup and the updates, no label formatting.
- Counts the cache keeps as running totals (pool timeouts, connections opened and closed, DNS
  lookups, invalidations, early refreshes) and the pool gauges are sampled from snapshots
  (`node_stats()`, the read-through's `stats()`) at each `PostalMetrics.refresh()`: every
  second, before each scrape, at shutdown.
  `CumulativeCounters` turns each total into counter increments, so multiprocess sums and
  `rate()` work as for any counter.

The pool metrics and the breaker gauge are labelled by role and node (`host:port`, or
`sentinel:<service>`): each server of a role has its own pool and breaker, and one replica or
cluster node in trouble must show as itself. Their series are made as nodes appear, since a
cluster names its nodes only once it has read the slot table. The operation metrics stay by role
only: they are the hot path's, and a node label would multiply their histograms' series by the
size of a cluster.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from postal.cache import (
    BreakerChange,
    BreakerState,
    CacheClient,
    CacheEvent,
    CloseReason,
    FillEvent,
    FillOutcome,
    Invalidator,
    NearCache,
    Outcome,
    PoolWaitEvent,
    ReadThrough,
    RefreshOutcome,
)
from postal.observability.batching import CounterBatch, HistogramBatch
from postal.observability.metrics import (
    BREAKER_CLOSED,
    BREAKER_HALF_OPEN,
    BREAKER_OPEN,
    DNS_OUTCOMES,
    INVALIDATION_OUTCOMES,
    LATENCY_BUCKETS,
    READ_PIPELINE_EVENT_NAMES,
    REPLICA_WAIT_OUTCOMES,
    PostalMetrics,
)

Place = tuple[str, str]  # (role, node): the labels of a node's pool and breaker series
BREAKER_VALUES = {
    BreakerState.CLOSED: BREAKER_CLOSED,
    BreakerState.HALF_OPEN: BREAKER_HALF_OPEN,
    BreakerState.OPEN: BREAKER_OPEN,
}


class CacheOperationMetrics:
    """A `CacheListener`: `postal_cache_operations_total` and `postal_cache_operation_seconds`,
    by role (not by node: see the module docstring), command and outcome."""

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
    """A `PoolWaitListener`: `postal_pool_wait_seconds`, by role and node.

    `places`: the (role, node) pairs known now, whose series are exported from the start;
    a node that appears later gets its series at its first queued checkout."""

    def __init__(self, metrics: PostalMetrics, places: Iterable[Place] = ()) -> None:
        self._histogram = metrics.pool_wait_seconds
        self._waits: dict[Place, Any] = {}
        for place in places:
            self._bind(place)

    def __call__(self, event: PoolWaitEvent) -> None:
        place = (event.role, event.node)
        waits = self._waits.get(place)
        if waits is None:
            waits = self._bind(place)
        waits.observe(event.waited)

    def _bind(self, place: Place) -> Any:
        waits = self._waits[place] = self._histogram.labels(*place)
        return waits


class BreakerMetrics:
    """A `BreakerListener`: `postal_cache_breaker_state` by role and node, set as each node's
    breaker changes (and at each sample, by `CacheSampler`)."""

    def __init__(self, metrics: PostalMetrics) -> None:
        self._gauge = metrics.breaker_state
        self._states: dict[Place, Any] = {}

    def __call__(self, change: BreakerChange) -> None:
        self.set(change.name, change.node, change.new)

    def set(self, role: str, node: str, state: BreakerState) -> None:
        gauge = self._states.get((role, node))
        if gauge is None:
            gauge = self._states[(role, node)] = self._gauge.labels(role, node)
        gauge.set(BREAKER_VALUES[state])


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


@dataclass(frozen=True, slots=True)
class NodeSeries:
    """The labelled children of one node's pool metrics."""

    in_use: Any
    idle: Any
    max_size: Any
    timeouts: Any
    opened: Any
    closed: dict[str, Any]  # by close reason

    @classmethod
    def bind(cls, metrics: PostalMetrics, role: str, node: str) -> NodeSeries:
        m = metrics
        return cls(
            in_use=m.pool_connections.labels(role, node, "in_use"),
            idle=m.pool_connections.labels(role, node, "idle"),
            max_size=m.pool_max_connections.labels(role, node),
            timeouts=m.pool_timeouts.labels(role, node),
            opened=m.pool_opened.labels(role, node),
            closed={
                reason.value: m.pool_closed.labels(role, node, reason.value)
                for reason in CloseReason
            },
        )


class CacheSampler:
    """Samples the cache's snapshots into the pool gauges and the cumulative counters, one set
    of series per node (made at the first sample that sees the node)."""

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
        self._nodes: dict[Place, NodeSeries] = {}
        self._pipelines: dict[Place, dict[str, Any]] = {}
        m = metrics
        self._dns = {outcome: m.dns_lookups.labels(outcome) for outcome in DNS_OUTCOMES}
        self._replica_waits = {
            outcome: m.replica_waits.labels(outcome) for outcome in REPLICA_WAIT_OUTCOMES
        }
        self._invalidations = {
            outcome: m.cache_invalidations.labels(outcome) for outcome in INVALIDATION_OUTCOMES
        }

    def sample(self) -> None:
        totals = self._totals
        for pool in self._cache.node_stats():
            place = (pool.role, pool.node)
            series = self._nodes.get(place)
            if series is None:
                series = self._nodes[place] = NodeSeries.bind(self._metrics, *place)
            series.in_use.set(pool.in_use)
            series.idle.set(pool.idle)
            series.max_size.set(pool.max_size)
            totals.advance(series.timeouts, ("timeouts", *place), pool.timeouts)
            totals.advance(series.opened, ("opened", *place), pool.opened)
            for reason, count in pool.closed.items():
                key = str(reason)
                totals.advance(series.closed[key], ("closed", *place, key), count)
        # Each read node's pipeline series exist from the start, at 0 while the pipeline is off
        # (READ_REDIS_AUTOPIPELINE=false), as the early refresh's do.
        for node in self._cache.nodes("read"):
            place = (node.role, node.name)
            events = self._pipelines.get(place)
            if events is None:
                events = self._pipelines[place] = {
                    name: self._metrics.read_pipeline_events.labels(*place, name)
                    for name in READ_PIPELINE_EVENT_NAMES
                }
            in_flight = self._metrics.read_pipeline_in_flight.labels(*place)
            if node.pipeline is None:
                in_flight.set(0)
                continue
            pipeline = node.pipeline.stats()
            for name, counter in events.items():
                totals.advance(counter, ("pipeline", *place, name), getattr(pipeline, name))
            in_flight.set(pipeline.in_flight)
        for node in self._cache.nodes():
            # A node without a breaker (a profile with none) is always closed, as
            # `CacheClient.breaker_state` has it.
            state = BreakerState.CLOSED if node.breaker is None else node.breaker.state
            self._breakers.set(node.role, node.name, state)
        dns = self._cache.dns.stats()
        for outcome in DNS_OUTCOMES:
            totals.advance(self._dns[outcome], ("dns", outcome), getattr(dns, outcome))
        waits = self._cache.replica_wait_stats()
        for outcome in REPLICA_WAIT_OUTCOMES:
            counter = self._replica_waits[outcome]
            totals.advance(counter, ("replica_wait", outcome), getattr(waits, outcome))
        invalidations = self._invalidator.stats()
        counts = {
            "done": invalidations.done,
            "failed": invalidations.failed,
            "retried": invalidations.retried,
            "given_up": invalidations.given_up,
            "coarse": invalidations.coarse,
        }
        for outcome, count in counts.items():
            totals.advance(self._invalidations[outcome], ("invalidations", outcome), count)


class NearCacheSampler:
    """Samples the near cache's stats into its counters and gauges."""

    def __init__(self, metrics: PostalMetrics, near: NearCache) -> None:
        self._metrics = metrics
        self._near = near
        self._totals = CumulativeCounters()

    def sample(self) -> None:
        m, stats, totals = self._metrics, self._near.stats(), self._totals
        totals.advance(m.near_reads.labels("hit"), "hit", stats.hits)
        totals.advance(m.near_reads.labels("miss"), "miss", stats.misses)
        totals.advance(m.near_evictions.labels("size"), "size", stats.evicted_size)
        totals.advance(m.near_evictions.labels("ttl"), "ttl", stats.evicted_ttl)
        totals.advance(m.near_evictions.labels("invalidated"), "invalidated", stats.invalidated)
        totals.advance(m.near_flushes, "flushes", stats.flushes)
        totals.advance(m.near_invalidations, "invalidations", stats.invalidations)
        m.near_bytes.set(stats.bytes)
        m.near_entries.set(stats.entries)
        m.near_tracking.set(1 if stats.live else 0)


class EarlyRefreshSampler:
    """Samples the read-through's early refresh counts into `postal_cache_early_refreshes_total`
    (each outcome's series exported from the start, 0 while early refresh is off)."""

    def __init__(self, metrics: PostalMetrics, reads: ReadThrough) -> None:
        self._reads = reads
        refreshes = metrics.cache_early_refreshes
        self._outcomes = {outcome: refreshes.labels(outcome.value) for outcome in RefreshOutcome}
        self._totals = CumulativeCounters()

    def sample(self) -> None:
        stats = self._reads.stats().early_refresh
        if stats is None:
            return
        for outcome, counter in self._outcomes.items():
            self._totals.advance(counter, outcome, getattr(stats, outcome.value))


def instrument_cache(
    metrics: PostalMetrics,
    cache: CacheClient,
    reads: ReadThrough,
    invalidator: Invalidator,
    near: NearCache | None = None,
) -> CacheSampler:
    """Subscribe the listeners to the cache's events, and the sampler of its snapshots to
    `metrics.refresh()` (so each scrape sees this process's latest state, and the last sample,
    at `metrics.close()`, comes after the cache has closed)."""
    cache.subscribe(CacheOperationMetrics(metrics))
    reads.subscribe(FillMetrics(metrics))
    waits = PoolWaitMetrics(metrics, [(node.role, node.name) for node in cache.nodes()])
    breakers = BreakerMetrics(metrics)
    cache.subscribe_pool_waits(waits)
    cache.subscribe_breakers(breakers)
    sampler = CacheSampler(metrics, cache, invalidator, breakers)
    sampler.sample()
    metrics.add_sampler(sampler.sample)
    metrics.add_sampler(EarlyRefreshSampler(metrics, reads).sample)
    if near is not None:
        metrics.add_sampler(NearCacheSampler(metrics, near).sample)
    return sampler
