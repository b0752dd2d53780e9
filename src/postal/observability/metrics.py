"""Postal's Prometheus metrics: their names, their collectors, and the text `/metrics` serves.

The names below are the project's interface to dashboards and alerts (deploy/): `METRIC_NAMES`
lists them, `SERIES_NAMES` adds the `_bucket`/`_sum`/`_count` series of the histograms, and
`KEY_EXPRESSIONS` holds the seed's five key metrics, each one PromQL expression over them, so the
dashboard, the alert rules and their tests use the very strings documented in docs/operations.md.

Two ways to collect, chosen when the app is built (`PostalMetrics.from_environment`):

- in-process (the default, and every test): the collectors live in a `CollectorRegistry` of the
  app's own, so many apps in one process never collide;
- multiprocess, when `PROMETHEUS_MULTIPROC_DIR` is set (`postal serve` sets it for its workers):
  prometheus_client keeps each value in a per-process file in that directory and `/metrics`, in
  whichever worker answers, merges the files of all of them. prometheus_client picks its value
  class when it is first imported, so the variable must be set before that; if it was set too
  late, Postal says so and falls back to in-process collection.

The collectors are fed at the edge (`observability.cache_metrics`, `api.http_metrics`): nothing
here is called from inside the cache layer. The hot path's updates are batched
(`observability.batching`); `refresh()` moves them into the collectors, with the samples of the
cache's running totals, every second (`refreshing()`), before each scrape and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from postal.observability.batching import Batches
from postal.observability.multiproc import MULTIPROC_ENV, dead_worker_pids

logger = logging.getLogger("postal.metrics")

REFRESH_INTERVAL = 1.0  # seconds between refreshes: batched updates and cache samples

# The classic text format, which every Prometheus (2.x and 3.x) and compatible scraper reads;
# prometheus_client's CONTENT_TYPE_LATEST now says version=1.0.0, and the body is the same text.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# -- the names: the interface to dashboards and alerts ---------------------------------------------

CACHE_OPERATIONS = "postal_cache_operations_total"
CACHE_OPERATION_SECONDS = "postal_cache_operation_seconds"
POOL_CONNECTIONS = "postal_pool_connections"
POOL_MAX_CONNECTIONS = "postal_pool_max_connections"
POOL_WAIT_SECONDS = "postal_pool_wait_seconds"
POOL_TIMEOUTS = "postal_pool_timeouts_total"
POOL_OPENED = "postal_pool_connections_opened_total"
POOL_CLOSED = "postal_pool_connections_closed_total"
READ_PIPELINE_EVENTS = "postal_read_pipeline_events_total"
READ_PIPELINE_IN_FLIGHT = "postal_read_pipeline_in_flight"
CACHE_FILLS = "postal_cache_fills_total"
CACHE_EARLY_REFRESHES = "postal_cache_early_refreshes_total"
CACHE_INVALIDATIONS = "postal_cache_invalidations_total"
BREAKER_STATE = "postal_cache_breaker_state"
DNS_LOOKUPS = "postal_dns_lookups_total"
REPLICA_WAITS = "postal_replica_waits_total"
HTTP_REQUEST_SECONDS = "postal_http_request_duration_seconds"
HTTP_REQUESTS_REFUSED = "postal_http_requests_refused_total"
HTTP_REQUESTS_DEFERRED = "postal_http_requests_deferred_total"
NEAR_CACHE_READS = "postal_near_cache_reads_total"
NEAR_CACHE_EVICTIONS = "postal_near_cache_evictions_total"
NEAR_CACHE_FLUSHES = "postal_near_cache_flushes_total"
NEAR_CACHE_INVALIDATIONS = "postal_near_cache_invalidations_received_total"
NEAR_CACHE_BYTES = "postal_near_cache_bytes"
NEAR_CACHE_ENTRIES = "postal_near_cache_entries"
NEAR_CACHE_TRACKING = "postal_near_cache_tracking_live"

HISTOGRAMS = frozenset({CACHE_OPERATION_SECONDS, POOL_WAIT_SECONDS, HTTP_REQUEST_SECONDS})
METRIC_NAMES = frozenset(
    {
        CACHE_OPERATIONS,
        CACHE_OPERATION_SECONDS,
        POOL_CONNECTIONS,
        POOL_MAX_CONNECTIONS,
        POOL_WAIT_SECONDS,
        POOL_TIMEOUTS,
        POOL_OPENED,
        POOL_CLOSED,
        READ_PIPELINE_EVENTS,
        READ_PIPELINE_IN_FLIGHT,
        CACHE_FILLS,
        CACHE_EARLY_REFRESHES,
        CACHE_INVALIDATIONS,
        BREAKER_STATE,
        DNS_LOOKUPS,
        REPLICA_WAITS,
        HTTP_REQUEST_SECONDS,
        HTTP_REQUESTS_REFUSED,
        HTTP_REQUESTS_DEFERRED,
        NEAR_CACHE_READS,
        NEAR_CACHE_EVICTIONS,
        NEAR_CACHE_FLUSHES,
        NEAR_CACHE_INVALIDATIONS,
        NEAR_CACHE_BYTES,
        NEAR_CACHE_ENTRIES,
        NEAR_CACHE_TRACKING,
    }
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Every series name a PromQL expression over Postal's metrics may name.
SERIES_NAMES = METRIC_NAMES | {
    name + suffix for name in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES
}

# Seconds. Fine below 10 ms, where a healthy cache lives (a GET is ~0.1-0.5 ms); up to the
# deadlines, pool timeout (4 s) and database timeout (5 s) above. +Inf is added by the library.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# postal_cache_breaker_state's values (cache.transport's BreakerState numbers them differently).
BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN = 0, 1, 2

# Label values beyond the lists, kept because folding them into another would hide them:
# cache outcome `circuit_open` (refused by the open breaker, no I/O), fill outcome `bypassed` (an
# invalidation of the key was pending, so no fill), invalidation outcomes `given_up` and `coarse`
# (too many keys pending: the whole cache invalidated at once instead, once it lands).
INVALIDATION_OUTCOMES = ("done", "failed", "retried", "given_up", "coarse")
DNS_OUTCOMES = ("cached", "resolved", "stale", "failed")
REPLICA_WAIT_OUTCOMES = ("confirmed", "behind", "skipped")
# The read pipeline's counts (`PipelineStats`), one series each.
READ_PIPELINE_EVENT_NAMES = (
    "commands", "writes", "receives", "discarded", "bypassed", "connects", "failures",
)  # fmt: skip

# -- the seed's five key metrics, one PromQL expression each ---------------------------------------

# The cache operation outcomes that count as failed, here and in `postal stats`.
FAILED_OUTCOMES = ("timeout", "pool_timeout", "connection_error", "error", "circuit_open")
_READ_GETS = 'role="read",command="GET"'
_FAILED = f'outcome=~"{"|".join(FAILED_OUTCOMES)}"'
# Reads a worker's memory answered (the near cache): no GET was sent for them. `or vector(0)`
# keeps the sums defined where no worker has a near cache (turned off).
_NEAR_HITS = f'(sum(rate({NEAR_CACHE_READS}{{outcome="hit"}}[5m])) or vector(0))'
KEY_EXPRESSIONS: Mapping[str, str] = {
    # Share of cache reads answered with the value, from memory or by Redis; errors and breaker
    # refusals count as not hit.
    "hit_rate": (
        f'(sum(rate({CACHE_OPERATIONS}{{{_READ_GETS},outcome="hit"}}[5m])) + {_NEAR_HITS})'
        f" / (sum(rate({CACHE_OPERATIONS}{{{_READ_GETS}}}[5m])) + {_NEAR_HITS})"
    ),
    # Seconds per cache read, pool wait included.
    "average_latency": (
        f"sum(rate({CACHE_OPERATION_SECONDS}_sum{{{_READ_GETS}}}[5m]))"
        f" / sum(rate({CACHE_OPERATION_SECONDS}_count{{{_READ_GETS}}}[5m]))"
    ),
    "p99_latency": (
        f"histogram_quantile(0.99, sum by (le) "
        f"(rate({CACHE_OPERATION_SECONDS}_bucket{{{_READ_GETS}}}[5m])))"
    ),
    # Share of each role's connection cap in use, over all its nodes, workers and instances.
    "pool_usage": (
        f'sum by (role) ({POOL_CONNECTIONS}{{state="in_use"}})'
        f" / sum by (role) ({POOL_MAX_CONNECTIONS})"
    ),
    # Share of cache operations (all roles and commands) that failed or were refused.
    "error_rate": (
        f"sum(rate({CACHE_OPERATIONS}{{{_FAILED}}}[5m])) / sum(rate({CACHE_OPERATIONS}[5m]))"
    ),
}


def multiprocess_values_enabled() -> bool:
    """Whether prometheus_client chose its per-process file values at import (see the module)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


class PostalMetrics:
    """The collectors of one app, and the rendering of `/metrics`.

    `multiprocess_dir`: None for in-process collection into `registry`; else the directory the
    workers' files are in (the collectors then register nowhere: the files are the registry).
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry() if multiprocess_dir is None else None
        registry = self.registry
        self.batches = Batches()  # the hot path's updates, until the next refresh()
        self._samplers: list[Callable[[], None]] = []

        self.cache_operations = Counter(
            CACHE_OPERATIONS,
            "Cache operations by role, command and outcome (hit, miss, ok, timeout,"
            " pool_timeout, connection_error, error, circuit_open).",
            ("role", "command", "outcome"),
            registry=registry,
        )
        self.cache_operation_seconds = Histogram(
            CACHE_OPERATION_SECONDS,
            "Cache operation latency in seconds, pool wait included.",
            ("role", "command"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        # The pool metrics and the breaker are per node (each server of a role has its own
        # pool and breaker: a replica, a cluster node); the operation metrics above stay per role,
        # so that a cluster's many nodes do not multiply the histograms' series.
        self.pool_connections = Gauge(
            POOL_CONNECTIONS,
            "Open pooled Redis connections by role, node and state (in_use, idle).",
            ("role", "node", "state"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_max_connections = Gauge(
            POOL_MAX_CONNECTIONS,
            "The pools' connection caps by role and node, summed over the worker processes.",
            ("role", "node"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_wait_seconds = Histogram(
            POOL_WAIT_SECONDS,
            "Seconds a checkout queued for a pooled connection (only checkouts that queued).",
            ("role", "node"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.pool_timeouts = Counter(
            POOL_TIMEOUTS,
            "Checkouts that gave up waiting for a pooled connection.",
            ("role", "node"),
            registry=registry,
        )
        self.pool_opened = Counter(
            POOL_OPENED,
            "Redis connections opened by the pools.",
            ("role", "node"),
            registry=registry,
        )
        self.pool_closed = Counter(
            POOL_CLOSED,
            "Redis connections closed by the pools, by reason (idle_time, lifetime, max_idle,"
            " error, shutdown).",
            ("role", "node", "reason"),
            registry=registry,
        )
        # Reads on the read pipeline take no pooled connection: these are their equivalent.
        self.read_pipeline_events = Counter(
            READ_PIPELINE_EVENTS,
            "The read pipeline's counts by role, node and event: commands sent, writes (one"
            " system call each), receives, replies discarded (deadline ended), reads bypassed to"
            " the pool, connects, failures.",
            ("role", "node", "event"),
            registry=registry,
        )
        self.read_pipeline_in_flight = Gauge(
            READ_PIPELINE_IN_FLIGHT,
            "Reads sent on the read pipeline and not answered yet, by role and node.",
            ("role", "node"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_fills = Counter(
            CACHE_FILLS,
            "Background cache fills by outcome (done, skipped, failed, stale_rejected, bypassed).",
            ("outcome",),
            registry=registry,
        )
        self.cache_early_refreshes = Counter(
            CACHE_EARLY_REFRESHES,
            "Early refreshes of hot entries by outcome: refreshed, stale_rejected (an"
            " invalidation came first), bypassed, uncached, failed, dropped (too many running).",
            ("outcome",),
            registry=registry,
        )
        self.cache_invalidations = Counter(
            CACHE_INVALIDATIONS,
            "Cache invalidations: done and failed count writes; retried and given_up count the"
            " keys a background retry then invalidated, or dropped; coarse counts the times too"
            " many keys were pending and the whole cache was to be invalidated instead.",
            ("outcome",),
            registry=registry,
        )
        self.breaker_state = Gauge(
            BREAKER_STATE,
            "Circuit breaker state by role and node: 0 closed, 1 half open, 2 open (worst worker).",
            ("role", "node"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.dns_lookups = Counter(
            DNS_LOOKUPS,
            "Redis host name lookups by outcome (cached, resolved, stale, failed).",
            ("outcome",),
            registry=registry,
        )
        self.replica_waits = Counter(
            REPLICA_WAITS,
            "Invalidations' waits for the replicas by outcome (confirmed; behind: a replica did"
            " not confirm in time, the invalidation is retried; skipped: no replicas).",
            ("outcome",),
            registry=registry,
        )
        self.http_request_seconds = Histogram(
            HTTP_REQUEST_SECONDS,
            "HTTP request duration in seconds by method, route template and status.",
            ("method", "route", "status"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.http_requests_refused = Counter(
            HTTP_REQUESTS_REFUSED,
            "HTTP requests refused by admission control (503 overloaded: the worker had"
            " POSTAL_MAX_IN_FLIGHT requests in flight); not in the request duration histogram.",
            registry=registry,
        )
        self.http_requests_deferred = Counter(
            HTTP_REQUESTS_DEFERRED,
            "HTTP requests whose start was put off to a later turn of the worker's event loop,"
            " because the turn had spent POSTAL_TURN_BUDGET starting others.",
            registry=registry,
        )

        # The near cache (NEAR_CACHE_ENABLED): sampled from its stats each refresh.
        self.near_reads = Counter(
            NEAR_CACHE_READS,
            "Reads the near cache was asked by outcome: hit (answered from this worker's"
            " memory) or miss (asked Redis next); reads while tracking is not live are neither.",
            ("outcome",),
            registry=registry,
        )
        self.near_evictions = Counter(
            NEAR_CACHE_EVICTIONS,
            "Near-cache entries dropped by reason: size (the byte bound), ttl (its own TTL),"
            " invalidated (Redis said the key changed, or this worker wrote it).",
            ("reason",),
            registry=registry,
        )
        self.near_flushes = Counter(
            NEAR_CACHE_FLUSHES,
            "Times the near cache was emptied: FLUSHALL or FLUSHDB, or tracking down or"
            " confirmed anew.",
            registry=registry,
        )
        self.near_invalidations = Counter(
            NEAR_CACHE_INVALIDATIONS,
            "Invalidation messages received from Redis on the tracking connections.",
            registry=registry,
        )
        self.near_bytes = Gauge(
            NEAR_CACHE_BYTES,
            "Bytes the near cache holds, entries counted with their keys and overhead.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.near_entries = Gauge(
            NEAR_CACHE_ENTRIES,
            "Entries the near cache holds.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.near_tracking = Gauge(
            NEAR_CACHE_TRACKING,
            "1 while tracking is live on every server reads go to (the near cache is used),"
            " else 0 (the least live worker).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        # Their series exist from the start, at 0, as the other counters' do once sampled.
        for outcome in ("hit", "miss"):
            self.near_reads.labels(outcome)
        for reason in ("size", "ttl", "invalidated"):
            self.near_evictions.labels(reason)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> PostalMetrics:
        """Multiprocess when `PROMETHEUS_MULTIPROC_DIR` is set (and was, in time), else
        in-process."""
        path = (os.environ if environ is None else environ).get(MULTIPROC_ENV) or None
        if path is not None and not multiprocess_values_enabled():
            logger.warning(
                "%s is set but prometheus_client was imported before it was: /metrics reports"
                " this process only",
                MULTIPROC_ENV,
            )
            path = None
        return cls(multiprocess_dir=path)

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    def add_sampler(self, sample: Callable[[], None]) -> None:
        """Call `sample` at each `refresh()` (to sample this process's pools and counters)."""
        self._samplers.append(sample)

    def refresh(self) -> None:
        """Bring the collectors up to date: samples taken, batched updates moved in."""
        for sample in self._samplers:
            sample()
        self.batches.flush()

    @contextlib.asynccontextmanager
    async def refreshing(self, interval: float = REFRESH_INTERVAL) -> AsyncIterator[None]:
        """Refresh every `interval` seconds while inside, so that a scrape answered by another
        worker is at most that far behind this one."""

        async def every() -> None:
            while True:
                await asyncio.sleep(interval)
                self.refresh()

        task = asyncio.create_task(every(), name="postal-metrics-refresh")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def render(self) -> bytes:
        """The text `/metrics` serves: this app's metrics, or all workers' in multiprocess mode."""
        self.refresh()
        if self.registry is not None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def forget_dead_workers(self) -> None:
        """At a worker's start: drop the live gauges of workers that died without saying so."""
        if self.multiprocess_dir is not None:
            for pid in dead_worker_pids(Path(self.multiprocess_dir)):
                mark_process_dead(pid, self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """At shutdown, once the cache has closed: a last sample (the connections closed for
        the shutdown included); then this worker's live gauges (pool connections, breaker)
        leave the multiprocess sums. Its counters and histograms stay, so totals never drop."""
        self.refresh()
        self._samplers.clear()
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
