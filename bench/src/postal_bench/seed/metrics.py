"""What Postal's `/metrics` says about one phase of `postal bench seed`: pure arithmetic on two
scrapes, one taken before the phase and one after.

The seed's cache rows are the service's own view (how long a cache GET took inside Postal, pool
wait included), so they come from the `postal_cache_operation_seconds` histogram, not from the
load generator. Its average is exact (`_sum` / `_count`). A percentile is not: a histogram only
knows how many operations fell in each bucket, so a percentile is only known to lie in one
bucket, `(lower, upper]`. `HistogramQuantile` keeps those bounds, which is what can honestly be
claimed ("p99 <= 10 ms" holds when at least 99% of the operations fell in buckets up to 10 ms),
next to the estimate Prometheus's `histogram_quantile` would give (linear inside the bucket).
Postal's buckets (0.1 ms ... 5 s, with 5, 7.5 and 10 ms among them) are fine enough to decide
both of the seed's claims: p99 < 10 ms after, p99 > 500 ms before.

The scrapes are `postal.stats.scrape.Scrape`s, the parser `postal stats` reads /metrics with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from postal.observability.metrics import (
    CACHE_FILLS,
    CACHE_OPERATION_SECONDS,
    CACHE_OPERATIONS,
    DNS_LOOKUPS,
    FAILED_OUTCOMES,
    NEAR_CACHE_READS,
    POOL_OPENED,
    POOL_WAIT_SECONDS,
)
from postal.stats.scrape import Scrape

READ_GET = {"role": "read", "command": "GET"}
DNS_NETWORK_OUTCOMES = ("resolved", "failed")  # lookups that went to the resolver


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """Cumulative counts observed between two scrapes, bound by bound."""
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


@dataclass(frozen=True, slots=True)
class HistogramQuantile:
    """A quantile read off cumulative bucket counts: the bucket it falls in, and an estimate."""

    q: float
    lower: float  # the quantile is above this (seconds)...
    upper: float  # ...and at most this (math.inf: above the last finite bucket)
    estimate: float  # linear interpolation inside the bucket, as histogram_quantile does

    def describe(self, unit: float = 1e3) -> str:
        """E.g. "7.3 (5-10]" in milliseconds; "> 5000" when past the last finite bucket."""
        if math.isinf(self.upper):
            return f"> {self.lower * unit:g}"
        return f"{self.estimate * unit:.3g} ({self.lower * unit:g}-{self.upper * unit:g}]"


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> HistogramQuantile | None:
    """The `q` quantile (0 < q < 1) of a histogram given as cumulative counts by upper bound.

    None when nothing was observed. The rank is q * total; the quantile lies in the first bucket
    whose cumulative count reaches it. The estimate interpolates linearly between the bucket's
    bounds (the first bucket's lower bound is 0), and is the lower bound for the +Inf bucket.
    """
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    bounds = sorted(cumulative)
    if not bounds or not math.isinf(bounds[-1]):
        raise ValueError("a histogram needs its +Inf bucket")
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = cumulative[upper]
        if count >= rank:
            if math.isinf(upper):
                return HistogramQuantile(q, lower, upper, lower)
            share = (rank - below) / (count - below) if count > below else 1.0
            return HistogramQuantile(q, lower, upper, lower + (upper - lower) * share)
        lower, below = upper, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


@dataclass(frozen=True, slots=True)
class CachePhase:
    """Postal's cache, between two scrapes: its read GETs, its pools, its DNS lookups."""

    gets: int  # read-role GETs, whatever their outcome (breaker refusals included)
    hits: int
    misses: int
    near_hits: int  # reads the near cache answered: no GET was sent for them
    timed: int  # the GETs the histogram timed (all but breaker refusals, which do no I/O)
    get_seconds: float  # their summed duration
    get_buckets: dict[float, float]  # their cumulative counts by upper bound
    failures: dict[str, int]  # cache operations of any role that failed, by outcome
    pool_wait_seconds: float  # the read pool's checkouts' summed wait (queued ones only)
    connections_opened: int  # by both pools
    dns_lookups: int  # that went to the resolver (resolved + failed)
    dns_cached: int  # answered without a lookup of their own: from the cache, or by joining one

    @property
    def get_average(self) -> float | None:
        return self.get_seconds / self.timed if self.timed else None

    @property
    def pool_wait_average(self) -> float | None:
        """The read pool's wait per timed GET (the part of a GET spent queued for a connection)."""
        return self.pool_wait_seconds / self.timed if self.timed else None

    @property
    def hit_rate(self) -> float | None:
        """Hits (from memory or Redis) over every read, as Postal's own hit_rate: a failed GET
        is not a hit."""
        reads = self.gets + self.near_hits
        return (self.hits + self.near_hits) / reads if reads else None

    @property
    def answered_hit_rate(self) -> float | None:
        """Hits over the reads answered (from memory, or by Redis with a hit or a miss): what
        the load's design sets."""
        answered = self.near_hits + self.hits + self.misses
        return (self.near_hits + self.hits) / answered if answered else None

    @property
    def failed_operations(self) -> int:
        return sum(self.failures.values())

    def get_quantile(self, q: float) -> HistogramQuantile | None:
        return histogram_quantile(q, self.get_buckets)


def cache_phase(before: Scrape, after: Scrape) -> CachePhase:
    """The differences between two scrapes of one Postal process (counters only grow)."""

    def delta(name: str, **labels: str) -> int:
        return round(after.total(name, **labels) - before.total(name, **labels))

    failures = {outcome: delta(CACHE_OPERATIONS, outcome=outcome) for outcome in FAILED_OUTCOMES}
    return CachePhase(
        gets=delta(CACHE_OPERATIONS, **READ_GET),
        hits=delta(CACHE_OPERATIONS, **READ_GET, outcome="hit"),
        misses=delta(CACHE_OPERATIONS, **READ_GET, outcome="miss"),
        near_hits=delta(NEAR_CACHE_READS, outcome="hit"),
        timed=delta(f"{CACHE_OPERATION_SECONDS}_count", **READ_GET),
        get_seconds=after.total(f"{CACHE_OPERATION_SECONDS}_sum", **READ_GET)
        - before.total(f"{CACHE_OPERATION_SECONDS}_sum", **READ_GET),
        get_buckets=bucket_delta(
            dict(before.buckets(CACHE_OPERATION_SECONDS, **READ_GET)),
            dict(after.buckets(CACHE_OPERATION_SECONDS, **READ_GET)),
        ),
        failures={outcome: count for outcome, count in failures.items() if count},
        pool_wait_seconds=after.total(f"{POOL_WAIT_SECONDS}_sum", role="read")
        - before.total(f"{POOL_WAIT_SECONDS}_sum", role="read"),
        connections_opened=delta(POOL_OPENED),
        dns_lookups=sum(delta(DNS_LOOKUPS, outcome=outcome) for outcome in DNS_NETWORK_OUTCOMES),
        dns_cached=delta(DNS_LOOKUPS, outcome="cached"),
    )


def fills_done(scrape: Scrape) -> int:
    """Background cache fills that wrote their entry, so far."""
    return round(scrape.total(CACHE_FILLS, outcome="done"))
