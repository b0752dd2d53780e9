"""What two scrapes an interval apart say: rates, hit rate, percentiles, pools, fills.

Pure: scrapes in, a `Summary` out. Counters become rates over the interval (their increase, a
counter that went down, i.e. a restarted worker, counting from zero as Prometheus' `rate()`
does). Percentiles come from the histograms' bucket increases over the interval, interpolated
within a bucket as `histogram_quantile` does; when the interval saw none of that traffic they
come from the cumulative buckets, since the process started, and `basis` says which
("interval", "since_start", or None when there was never any). Gauges (pool connections,
breaker) are the second scrape's values.

Pools are one row per node of each role (each replica, cluster node or Sentinel-located server
has its own pool and breaker), by the pool metrics' `node` label; a Postal whose metrics have
no such label gives one row per role, with node "".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from postal.observability.metrics import (
    BREAKER_STATE,
    CACHE_FILLS,
    CACHE_INVALIDATIONS,
    CACHE_OPERATION_SECONDS,
    CACHE_OPERATIONS,
    DNS_LOOKUPS,
    FAILED_OUTCOMES,
    HTTP_REQUEST_SECONDS,
    NEAR_CACHE_READS,
    POOL_CLOSED,
    POOL_CONNECTIONS,
    POOL_MAX_CONNECTIONS,
    POOL_OPENED,
    POOL_TIMEOUTS,
    POOL_WAIT_SECONDS,
)
from postal.stats.scrape import Scrape

Basis = Literal["interval", "since_start"]
Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last

BREAKER_NAMES = {0: "closed", 1: "half_open", 2: "open"}  # postal_cache_breaker_state's values
READ_GET = {"role": "read", "command": "GET"}  # what the hit rate is about, as in the docs' PromQL


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of cumulative buckets, as Prometheus' `histogram_quantile` computes it:
    linear within the bucket the rank falls in, from 0 below the first bound; in the +Inf
    bucket, the highest finite bound. None when the buckets hold nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _increase(before: float, after: float) -> float:
    """A counter's increase; one that went down was reset (a worker restarted): count from 0."""
    return after - before if after >= before else after


def _key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


class Delta:
    """Two scrapes of one Postal, `before` then `after`."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before = before
        self.after = after
        self.seconds = max(after.at - before.at, 1e-9)

    def increase(self, name: str, **match: str) -> float:
        """The summed increase of the matching counter series over the interval."""
        earlier = {_key(sample.labels): sample.value for sample in self.before.samples(name)}
        return math.fsum(
            _increase(earlier.get(_key(sample.labels), 0.0), sample.value)
            for sample in self.after.samples(name, **match)
        )

    def rate(self, name: str, **match: str) -> float:
        return self.increase(name, **match) / self.seconds

    def bucket_increase(self, histogram: str, **match: str) -> Buckets:
        name = histogram + "_bucket"
        earlier = {_key(sample.labels): sample.value for sample in self.before.samples(name)}
        counts: dict[float, float] = {}
        for sample in self.after.samples(name, **match):
            bound = float(sample.labels["le"])
            grown = _increase(earlier.get(_key(sample.labels), 0.0), sample.value)
            counts[bound] = counts.get(bound, 0.0) + grown
        return sorted(counts.items())

    def percentiles(
        self, histogram: str, qs: tuple[float, ...], **match: str
    ) -> tuple[list[float | None], Basis | None]:
        """The quantiles over the interval, or since the start when the interval saw nothing."""
        basis: Basis
        buckets = self.bucket_increase(histogram, **match)
        if buckets and buckets[-1][1] > 0:
            basis = "interval"
        else:
            buckets = self.after.buckets(histogram, **match)
            if not buckets or buckets[-1][1] <= 0:
                return [None for _ in qs], None
            basis = "since_start"
        return [quantile(q, buckets) for q in qs], basis

    def counts(self, name: str, label: str) -> Counts:
        values = [combo[0] for combo in self.after.label_values(name, label)]
        return Counts(
            interval={value: self.increase(name, **{label: value}) for value in values},
            total={value: self.after.total(name, **{label: value}) for value in values},
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ratio(part: float, whole: float) -> float | None:
    return None if whole <= 0 else part / whole


@dataclass(frozen=True, slots=True)
class Counts:
    """Counts by outcome (or reason): over the interval, and since the start."""

    interval: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandStats:
    role: str
    command: str
    ops_per_second: float
    errors_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    basis: Basis | None  # what the percentiles are over
    outcomes: dict[str, float]  # over the interval


@dataclass(frozen=True, slots=True)
class CacheSummary:
    # Reads answered with a value, from a worker's memory (the near cache) or by a read-role
    # GET, over every such read; over the interval.
    hit_rate: float | None
    hit_rate_since_start: float | None
    near_share: float | None  # of those reads, the share the near cache answered
    ops_per_second: float
    error_rate: float | None  # share of operations (all roles) that failed, over the interval
    commands: list[CommandStats]


@dataclass(frozen=True, slots=True)
class PoolSummary:
    role: str
    node: str  # "host:port" (or "sentinel:<service>"); "" if the metrics name no node
    in_use: float
    idle: float
    max: float  # the caps summed over the workers
    waits_per_second: float  # checkouts that had to queue
    wait_p99_ms: float | None
    wait_basis: Basis | None
    timeouts: float  # over the interval
    timeouts_total: float
    opened: float  # over the interval
    opened_total: float
    closed_total: dict[str, float]  # by reason
    breaker: str | None  # closed, half_open, open; None if not reported


@dataclass(frozen=True, slots=True)
class RouteStats:
    method: str
    route: str
    requests_per_second: float
    server_errors_per_second: float  # 5xx
    p50_ms: float | None
    p99_ms: float | None
    basis: Basis | None


@dataclass(frozen=True, slots=True)
class Summary:
    seconds: float  # between the two scrapes
    cache: CacheSummary
    pools: list[PoolSummary]
    fills: Counts
    invalidations: Counts
    dns: Counts
    http: list[RouteStats]


def summarize(before: Scrape, after: Scrape) -> Summary:
    delta = Delta(before, after)
    return Summary(
        seconds=round(delta.seconds, 3),
        cache=_cache(delta),
        pools=[_pool(delta, role, node) for role, node in _nodes(after)],
        fills=delta.counts(CACHE_FILLS, "outcome"),
        invalidations=delta.counts(CACHE_INVALIDATIONS, "outcome"),
        dns=delta.counts(DNS_LOOKUPS, "outcome"),
        http=_http(delta),
    )


def _cache(delta: Delta) -> CacheSummary:
    commands = []
    for role, command in delta.after.label_values(CACHE_OPERATIONS, "role", "command"):
        outcomes = [
            combo[0]
            for combo in delta.after.label_values(
                CACHE_OPERATIONS, "outcome", role=role, command=command
            )
        ]
        (p50, p99), basis = delta.percentiles(
            CACHE_OPERATION_SECONDS, (0.5, 0.99), role=role, command=command
        )
        failed = sum(
            delta.increase(CACHE_OPERATIONS, role=role, command=command, outcome=outcome)
            for outcome in FAILED_OUTCOMES
        )
        commands.append(
            CommandStats(
                role=role,
                command=command,
                ops_per_second=delta.rate(CACHE_OPERATIONS, role=role, command=command),
                errors_per_second=failed / delta.seconds,
                p50_ms=_ms(p50),
                p99_ms=_ms(p99),
                basis=basis,
                outcomes={
                    outcome: delta.increase(
                        CACHE_OPERATIONS, role=role, command=command, outcome=outcome
                    )
                    for outcome in outcomes
                },
            )
        )
    # A near-cache hit is a read no GET was sent for; a near-cache miss then sends one.
    near = delta.increase(NEAR_CACHE_READS, outcome="hit")
    hits = delta.increase(CACHE_OPERATIONS, outcome="hit", **READ_GET) + near
    reads = delta.increase(CACHE_OPERATIONS, **READ_GET) + near
    near_total = delta.after.total(NEAR_CACHE_READS, outcome="hit")
    all_ops = delta.increase(CACHE_OPERATIONS)
    failed_ops = sum(delta.increase(CACHE_OPERATIONS, outcome=o) for o in FAILED_OUTCOMES)
    return CacheSummary(
        hit_rate=_ratio(hits, reads),
        hit_rate_since_start=_ratio(
            delta.after.total(CACHE_OPERATIONS, outcome="hit", **READ_GET) + near_total,
            delta.after.total(CACHE_OPERATIONS, **READ_GET) + near_total,
        ),
        near_share=_ratio(near, reads) if near else None,
        ops_per_second=all_ops / delta.seconds,
        error_rate=_ratio(failed_ops, all_ops),
        commands=commands,
    )


def _nodes(scrape: Scrape) -> list[tuple[str, str]]:
    """The (role, node) pairs the pool gauges name, by role then node."""
    nodes = {
        (role, node)
        for name in (POOL_MAX_CONNECTIONS, POOL_CONNECTIONS)
        for role, node in scrape.label_values(name, "role", "node")
    }
    return sorted(nodes)


def _pool(delta: Delta, role: str, node: str) -> PoolSummary:
    after = delta.after
    # A scrape without the node label (an older Postal) has node "": match the role alone.
    where = {"role": role, "node": node} if node else {"role": role}
    (wait_p99,), wait_basis = delta.percentiles(POOL_WAIT_SECONDS, (0.99,), **where)
    # One sample per node (the workers' gauges are merged as their worst, livemax); should a
    # scrape hold several, the node is as bad as the worst of them.
    states = [sample.value for sample in after.samples(BREAKER_STATE, **where)]
    breaker = BREAKER_NAMES.get(round(max(states)), "unknown") if states else None
    closed = after.label_values(POOL_CLOSED, "reason", **where)
    return PoolSummary(
        role=role,
        node=node,
        in_use=after.total(POOL_CONNECTIONS, state="in_use", **where),
        idle=after.total(POOL_CONNECTIONS, state="idle", **where),
        max=after.total(POOL_MAX_CONNECTIONS, **where),
        waits_per_second=delta.rate(POOL_WAIT_SECONDS + "_count", **where),
        wait_p99_ms=_ms(wait_p99),
        wait_basis=wait_basis,
        timeouts=delta.increase(POOL_TIMEOUTS, **where),
        timeouts_total=after.total(POOL_TIMEOUTS, **where),
        opened=delta.increase(POOL_OPENED, **where),
        opened_total=after.total(POOL_OPENED, **where),
        closed_total={
            reason: after.total(POOL_CLOSED, reason=reason, **where) for (reason,) in closed
        },
        breaker=breaker,
    )


def _http(delta: Delta) -> list[RouteStats]:
    count = HTTP_REQUEST_SECONDS + "_count"
    routes = []
    for method, route in delta.after.label_values(count, "method", "route"):
        statuses = delta.after.label_values(count, "status", method=method, route=route)
        server_errors = sum(
            delta.increase(count, method=method, route=route, status=status)
            for (status,) in statuses
            if status.startswith("5")
        )
        (p50, p99), basis = delta.percentiles(
            HTTP_REQUEST_SECONDS, (0.5, 0.99), method=method, route=route
        )
        routes.append(
            RouteStats(
                method=method,
                route=route,
                requests_per_second=delta.rate(count, method=method, route=route),
                server_errors_per_second=server_errors / delta.seconds,
                p50_ms=_ms(p50),
                p99_ms=_ms(p99),
                basis=basis,
            )
        )
    routes.sort(key=lambda stats: (-stats.requests_per_second, stats.route, stats.method))
    return routes
