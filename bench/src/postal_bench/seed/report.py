"""What `postal bench seed` measured, reduced to the seed's table: pure code, no I/O.

The incident report's table claimed, before -> after: cache GET 450 ms -> < 5 ms, p99 > 500 ms
-> < 10 ms, throughput 90x. Each run of each profile gives one `ProfileRun`; a row of the table
is the median over a profile's runs, and its before/tuned ratio the median of the ratios of runs
paired in order (run 1 of before with run 1 of tuned, measured one after the other), as in the
other benches, so drift between runs cancels out.

The target: the tuned profile's cache GET p99, as the service saw it (the seed's row), at most
10 ms by the histogram's buckets, and its throughput on GET /api/v1/posts/{id} at least 10x the
before profile's. The request p99 seen by the load generator is shown too, honestly: with 100
connections back to back it is mostly queueing (Little's law: 100 / req/s on average).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from postal_bench.seed.load import CountedRun
from postal_bench.seed.metrics import CachePhase, HistogramQuantile
from postal_bench.stats import median, percentiles

BEFORE, TUNED = "before", "tuned"
PROFILES = (BEFORE, TUNED)
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)  # of request latencies, for the table and plot
P99_TARGET = 0.010  # s: the tuned cache GET p99, at most
THROUGHPUT_TARGET = 10.0  # tuned req/s over before req/s, at least
MS = 1e3

ITEM_PATH = "GET /api/v1/posts/{id}"
LIST_PATH = "GET /api/v1/posts"


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds used during a phase; None where this platform cannot tell."""

    server: float | None = None
    proxy: float | None = None
    load: float | None = None  # the bench's own process: the load generator
    redis: float | None = None  # every redis-server process on this machine
    postgres: float | None = None  # every postgres process (the server and its backends)
    machine: float | None = None  # every process, every core

    @property
    def others(self) -> float | None:
        """What the machine spent on everything not listed: other work sharing the cores."""
        parts = (self.server, self.proxy, self.load, self.redis, self.postgres)
        if self.machine is None or any(part is None for part in parts):
            return None
        return max(0.0, self.machine - sum(part or 0.0 for part in parts))


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured load (`requests` GETs of one endpoint) and what Postal said about it."""

    requests: int
    completed: int  # answered 2xx
    errors: int
    first_error: str | None
    elapsed: float  # s, first send to last reply
    latency: dict[float, float]  # percentile -> seconds, client side, failed requests included
    cache: CachePhase
    proxy_accepted: int  # connections the latency proxy accepted meanwhile
    cpu: Cpu = field(default_factory=Cpu)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    @classmethod
    def measured(cls, load: CountedRun, cache: CachePhase, proxy_accepted: int, cpu: Cpu) -> Phase:
        latency = dict(zip(PERCENTILES, percentiles(load.latencies, PERCENTILES), strict=True))
        return cls(
            requests=len(load.latencies),
            completed=load.completed,
            errors=load.errors,
            first_error=load.first_error,
            elapsed=load.elapsed,
            latency=latency,
            cache=cache,
            proxy_accepted=proxy_accepted,
            cpu=cpu,
        )


@dataclass(frozen=True, slots=True)
class ProfileRun:
    """One start of Postal with one profile: its warm-up, then both measured loads."""

    profile: str
    run: int  # 1-based
    items: Phase  # GET /api/v1/posts/{id} over the hot set and cold posts
    listing: Phase  # GET /api/v1/posts
    warmed: int  # hot posts whose cache entries were filled before measuring
    log_lines: int = 0  # lines the server wrote while measured (warnings and errors)
    first_log_line: str | None = None

    @property
    def connections_opened(self) -> int:
        return self.items.cache.connections_opened + self.listing.cache.connections_opened

    @property
    def proxy_accepted(self) -> int:
        return self.items.proxy_accepted + self.listing.proxy_accepted

    @property
    def dns_lookups(self) -> int:
        return self.items.cache.dns_lookups + self.listing.cache.dns_lookups

    @property
    def dns_cached(self) -> int:
        return self.items.cache.dns_cached + self.listing.cache.dns_cached

    @property
    def request_errors(self) -> int:
        return self.items.errors + self.listing.errors

    @property
    def cache_errors(self) -> int:
        return self.items.cache.failed_operations + self.listing.cache.failed_operations

    @property
    def get_p99(self) -> HistogramQuantile | None:
        return self.items.cache.get_quantile(0.99)


# -- rows --------------------------------------------------------------------------------------

Value = Callable[[ProfileRun], float | None]


def show_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * MS:,.3g}" if value < 0.1 else f"{value * MS:,.0f}"


def show_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def show_count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def show_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def show_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}x"


@dataclass(frozen=True, slots=True)
class RowSpec:
    label: str
    value: Value
    show: Callable[[float | None], str]
    better: str | None = None  # "lower" or "higher": the ratio column says how much better
    seed_before: str = ""
    seed_after: str = ""
    cell: Callable[[Sequence[ProfileRun]], str] | None = None  # None: the median, shown


def _p99_estimate(run: ProfileRun) -> float | None:
    quantile = run.get_p99
    return None if quantile is None else quantile.estimate


def _latency(phase: Callable[[ProfileRun], Phase], q: float) -> Value:
    return lambda run: phase(run).latency.get(q)


def _items(run: ProfileRun) -> Phase:
    return run.items


def _listing(run: ProfileRun) -> Phase:
    return run.listing


def p99_cell(runs: Sequence[ProfileRun]) -> str:
    """The median run's estimate and, conservatively, the bucket it is known to lie in."""
    quantiles = [run.get_p99 for run in runs]
    known = [quantile for quantile in quantiles if quantile is not None]
    if not known or len(known) != len(quantiles):
        return "-"
    shown = HistogramQuantile(
        0.99,
        statistics.median_low([quantile.lower for quantile in known]),
        statistics.median_high([quantile.upper for quantile in known]),
        statistics.median([quantile.estimate for quantile in known]),
    )
    return shown.describe(MS)


def hit_rate_cell(runs: Sequence[ProfileRun]) -> str:
    """Hits over all GETs (Postal's hit_rate), and over the GETs Redis answered."""
    overall = median([run.items.cache.hit_rate for run in runs])
    answered = median([run.items.cache.answered_hit_rate for run in runs])
    return f"{show_share(overall)} ({show_share(answered)})"


def reads_cell(runs: Sequence[ProfileRun]) -> str:
    """Reads the near cache answered, and GETs sent to Redis (the cache GET rows' count)."""
    near = median([run.items.cache.near_hits for run in runs])
    gets = median([run.items.cache.gets for run in runs])
    return f"{show_count(near)} / {show_count(gets)}"


def errors_cell(runs: Sequence[ProfileRun]) -> str:
    return f"{sum(run.request_errors for run in runs)} / {sum(run.cache_errors for run in runs)}"


ROWS = (
    RowSpec(
        "cache GET avg, service (ms)",
        lambda run: run.items.cache.get_average,
        show_ms,
        "lower",
        "450",
        "< 5",
    ),
    RowSpec(
        "cache GET p99, service (ms)",
        _p99_estimate,
        show_ms,
        "lower",
        "> 500",
        "< 10",
        cell=p99_cell,
    ),
    RowSpec(
        "... of which pool wait, avg (ms)",
        lambda run: run.items.cache.pool_wait_average,
        show_ms,
    ),
    RowSpec(f"{ITEM_PATH} p50 (ms)", _latency(_items, 50.0), show_ms, "lower"),
    RowSpec(f"{ITEM_PATH} p99 (ms)", _latency(_items, 99.0), show_ms, "lower"),
    RowSpec(f"{ITEM_PATH} req/s", lambda run: run.items.rate, show_rate, "higher", "", "90x"),
    RowSpec(f"{LIST_PATH} p50 (ms)", _latency(_listing, 50.0), show_ms, "lower"),
    RowSpec(f"{LIST_PATH} p99 (ms)", _latency(_listing, 99.0), show_ms, "lower"),
    RowSpec(f"{LIST_PATH} req/s", lambda run: run.listing.rate, show_rate, "higher"),
    RowSpec(
        "cache hit rate: of GETs (of answered)",
        lambda run: run.items.cache.hit_rate,
        show_share,
        cell=hit_rate_cell,
    ),
    RowSpec(
        "reads: near cache / Redis GETs",
        lambda run: run.items.cache.near_hits,
        show_count,
        cell=reads_cell,
    ),
    RowSpec("Redis connections opened", lambda run: run.connections_opened, show_count, "lower"),
    RowSpec("... accepted by the proxy", lambda run: run.proxy_accepted, show_count, "lower"),
    RowSpec("DNS lookups made", lambda run: run.dns_lookups, show_count, "lower"),
    RowSpec("DNS: cached, or joined a lookup", lambda run: run.dns_cached, show_count),
    RowSpec(
        "errors: requests / cache ops",
        lambda run: run.request_errors,
        show_count,
        cell=errors_cell,
    ),
)
COLUMNS = ("", "seed before", "seed after", BEFORE, TUNED, "tuned better by")


def paired_ratio(
    before: Sequence[ProfileRun], tuned: Sequence[ProfileRun], value: Value, better: str | None
) -> float | None:
    """Median over paired runs of how many times better tuned is (None: not a ratio row)."""
    if better is None:
        return None
    ratios: list[float | None] = []
    for slow, fast in zip(before, tuned, strict=False):
        a, b = value(slow), value(fast)
        if a is None or b is None:
            ratios.append(None)
        elif better == "lower":
            ratios.append(a / b if b > 0 else None)
        else:
            ratios.append(b / a if a > 0 else None)
    return median(ratios)


def table_rows(runs: Sequence[ProfileRun]) -> list[tuple[str, ...]]:
    """The seed's table: one row per RowSpec, the seed's claims next to the medians measured."""
    before = [run for run in runs if run.profile == BEFORE]
    tuned = [run for run in runs if run.profile == TUNED]
    rows: list[tuple[str, ...]] = []
    for spec in ROWS:
        cells: tuple[str, ...]
        if spec.cell is not None:
            cells = (spec.cell(before), spec.cell(tuned))
        else:
            cells = tuple(
                spec.show(median([spec.value(run) for run in group])) for group in (before, tuned)
            )
        ratio = show_ratio(paired_ratio(before, tuned, spec.value, spec.better))
        rows.append((spec.label, spec.seed_before, spec.seed_after, *cells, ratio))
    return rows


# -- the target ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetCheck:
    p99_upper: float | None  # s: the tuned cache GET p99 is at most this (median run's bucket)
    throughput_ratio: float | None  # tuned req/s / before req/s, median of paired runs
    request_p99: float | None  # s: tuned GET /api/v1/posts/{id} p99 at the load generator
    tuned_rate: float | None
    connections: int

    @property
    def p99_met(self) -> bool:
        return self.p99_upper is not None and self.p99_upper <= P99_TARGET

    @property
    def throughput_met(self) -> bool:
        return self.throughput_ratio is not None and self.throughput_ratio >= THROUGHPUT_TARGET

    @property
    def met(self) -> bool:
        return self.p99_met and self.throughput_met

    def lines(self) -> list[str]:
        upper = "-" if self.p99_upper is None else f"{self.p99_upper * MS:g} ms"
        queueing = (
            ""
            if not self.tuned_rate
            else f" (Little's law: {self.connections} connections / {self.tuned_rate:,.0f} req/s"
            f" = {self.connections / self.tuned_rate * MS:,.0f} ms on average, queueing)"
        )
        return [
            f"target: tuned cache GET p99 (service) <= {P99_TARGET * MS:g} ms by the buckets:"
            f" p99 <= {upper}, {'met' if self.p99_met else 'NOT met'};"
            f" tuned throughput >= {THROUGHPUT_TARGET:g}x before:"
            f" {show_ratio(self.throughput_ratio)}, {'met' if self.throughput_met else 'NOT met'}",
            f"  the request p99 the load generator saw, tuned: {show_ms(self.request_p99)} ms"
            f"{queueing}",
        ]

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {
            "p99_target": P99_TARGET,
            "throughput_target": THROUGHPUT_TARGET,
            "p99_met": self.p99_met,
            "throughput_met": self.throughput_met,
            "met": self.met,
        }


def check_target(runs: Sequence[ProfileRun], connections: int) -> TargetCheck:
    before = [run for run in runs if run.profile == BEFORE]
    tuned = [run for run in runs if run.profile == TUNED]
    uppers = [run.get_p99 for run in tuned]
    known = [quantile.upper for quantile in uppers if quantile is not None]
    return TargetCheck(
        p99_upper=statistics.median_high(known) if known and len(known) == len(uppers) else None,
        throughput_ratio=paired_ratio(before, tuned, lambda run: run.items.rate, "higher"),
        request_p99=median([run.items.latency.get(99.0) for run in tuned]),
        tuned_rate=median([run.items.rate for run in tuned]),
        connections=connections,
    )


# -- JSON ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * MS, 4)


def quantile_json(quantile: HistogramQuantile | None) -> dict[str, object] | None:
    if quantile is None:
        return None
    upper = None if quantile.upper == float("inf") else _ms(quantile.upper)
    return {
        "estimate_ms": _ms(quantile.estimate),
        "above_ms": _ms(quantile.lower),
        "at_most_ms": upper,
    }


def phase_json(phase: Phase) -> dict[str, object]:
    cache = phase.cache
    return {
        "requests": phase.requests,
        "completed": phase.completed,
        "errors": phase.errors,
        "first_error": phase.first_error,
        "elapsed_s": round(phase.elapsed, 4),
        "req_per_s": round(phase.rate, 1),
        "latency_ms": {f"p{q:g}": _ms(value) for q, value in phase.latency.items()},
        "cache": {
            "gets": cache.gets,
            "near_hits": cache.near_hits,
            "hits": cache.hits,
            "misses": cache.misses,
            "timed": cache.timed,
            "hit_rate": cache.hit_rate,
            "answered_hit_rate": cache.answered_hit_rate,
            "get_avg_ms": _ms(cache.get_average),
            "pool_wait_avg_ms": _ms(cache.pool_wait_average),
            "get_p50": quantile_json(cache.get_quantile(0.5)),
            "get_p99": quantile_json(cache.get_quantile(0.99)),
            "get_buckets": {f"{bound:g}": count for bound, count in cache.get_buckets.items()},
            "failed_operations": cache.failed_operations,
            "failures": cache.failures,
            "connections_opened": cache.connections_opened,
            "dns_lookups": cache.dns_lookups,
            "dns_cached": cache.dns_cached,
        },
        "proxy_accepted": phase.proxy_accepted,
        "cpu_s": asdict(phase.cpu),
    }


def run_json(run: ProfileRun) -> dict[str, object]:
    return {
        "profile": run.profile,
        "run": run.run,
        "warmed": run.warmed,
        "items": phase_json(run.items),
        "listing": phase_json(run.listing),
        "log_lines": run.log_lines,
        "first_log_line": run.first_log_line,
    }
