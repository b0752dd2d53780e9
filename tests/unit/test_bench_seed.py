"""`postal bench seed`'s pure parts: percentiles from histogram buckets, metric deltas, the
request schedule, the table, the target, and the options' checks."""

import json
import math
from dataclasses import replace

import pytest
from rich.console import Console

from postal.stats.scrape import Scrape
from postal_bench.errors import BenchError, NotLoopback
from postal_bench.seed.bench import SeedReport
from postal_bench.seed.load import request_schedule
from postal_bench.seed.metrics import (
    CachePhase,
    bucket_delta,
    cache_phase,
    fills_done,
    histogram_quantile,
)
from postal_bench.seed.options import SeedBenchOptions, through_proxy
from postal_bench.seed.render import cpu_line, render_report
from postal_bench.seed.report import (
    COLUMNS,
    PERCENTILES,
    ROWS,
    Cpu,
    Phase,
    ProfileRun,
    check_target,
    table_rows,
)

INF = math.inf

# -- percentiles from buckets ----------------------------------------------------------------------


def test_a_quantile_lies_in_the_first_bucket_whose_count_reaches_its_rank() -> None:
    # 100 observations: 50 up to 5 ms, 45 more up to 10 ms, the last 5 up to 25 ms.
    buckets = {0.005: 50.0, 0.01: 95.0, 0.025: 100.0, INF: 100.0}

    p50 = histogram_quantile(0.5, buckets)
    p90 = histogram_quantile(0.9, buckets)
    p99 = histogram_quantile(0.99, buckets)

    assert p50 is not None
    assert p90 is not None
    assert p99 is not None
    assert (p50.lower, p50.upper, p50.estimate) == (0.0, 0.005, 0.005)
    assert (p90.lower, p90.upper) == (0.005, 0.01)
    assert p90.estimate == pytest.approx(0.005 + 0.005 * 40 / 45)  # 40 of the bucket's 45
    assert (p99.lower, p99.upper) == (0.01, 0.025)
    assert p99.estimate == pytest.approx(0.01 + 0.015 * 4 / 5)
    assert p99.describe() == "22 (10-25]"


def test_p99_is_known_to_be_at_most_10ms_only_when_99_percent_fell_below_it() -> None:
    enough = histogram_quantile(0.99, {0.0075: 90.0, 0.01: 99.0, 0.025: 100.0, INF: 100.0})
    short = histogram_quantile(0.99, {0.0075: 90.0, 0.01: 98.0, 0.025: 100.0, INF: 100.0})

    assert enough is not None
    assert short is not None
    assert enough.upper == 0.01
    assert short.upper == 0.025


def test_a_quantile_past_the_last_finite_bucket_is_only_a_lower_bound() -> None:
    quantile = histogram_quantile(0.99, {1.0: 50.0, 5.0: 90.0, INF: 100.0})

    assert quantile is not None
    assert (quantile.lower, quantile.upper, quantile.estimate) == (5.0, INF, 5.0)
    assert quantile.describe() == "> 5000"


def test_no_observation_has_no_quantile_and_bad_input_is_refused() -> None:
    assert histogram_quantile(0.99, {0.01: 0.0, INF: 0.0}) is None
    with pytest.raises(ValueError, match="quantile must be in"):
        histogram_quantile(1.0, {INF: 1.0})
    with pytest.raises(ValueError, match="Inf bucket"):
        histogram_quantile(0.5, {0.01: 1.0})


# -- two scrapes ---------------------------------------------------------------------------------


def scrape_text(*, hits: int, misses: int, timeouts: int, le5ms: int, total: int, secs: float,
                opened: int, resolved: int, cached: int, fills: int) -> str:  # fmt: skip
    series = "postal_cache_operation_seconds"
    read_get = 'role="read",command="GET"'
    return "\n".join(
        [
            "# TYPE postal_cache_operations_total counter",
            f'postal_cache_operations_total{{{read_get},outcome="hit"}} {hits}',
            f'postal_cache_operations_total{{{read_get},outcome="miss"}} {misses}',
            f'postal_cache_operations_total{{{read_get},outcome="timeout"}} {timeouts}',
            'postal_cache_operations_total{role="write",command="SET",outcome="ok"} 7',
            f"# TYPE {series} histogram",
            f'{series}_bucket{{{read_get},le="0.005"}} {le5ms}',
            f'{series}_bucket{{{read_get},le="+Inf"}} {total}',
            f"{series}_count{{{read_get}}} {total}",
            f"{series}_sum{{{read_get}}} {secs}",
            f'{series}_bucket{{role="write",command="SET",le="0.005"}} 7',
            f'{series}_bucket{{role="write",command="SET",le="+Inf"}} 7',
            f'{series}_count{{role="write",command="SET"}} 7',
            f'{series}_sum{{role="write",command="SET"}} 0.007',
            "# TYPE postal_pool_wait_seconds histogram",
            f'postal_pool_wait_seconds_sum{{role="read"}} {secs / 2}',
            'postal_pool_wait_seconds_sum{role="write"} 9.0',
            "# TYPE postal_pool_connections_opened_total counter",
            f'postal_pool_connections_opened_total{{role="read"}} {opened}',
            'postal_pool_connections_opened_total{role="write"} 3',
            "# TYPE postal_dns_lookups_total counter",
            f'postal_dns_lookups_total{{outcome="resolved"}} {resolved}',
            f'postal_dns_lookups_total{{outcome="cached"}} {cached}',
            'postal_dns_lookups_total{outcome="failed"} 1',
            "# TYPE postal_cache_fills_total counter",
            f'postal_cache_fills_total{{outcome="done"}} {fills}',
            "",
        ]
    )


def test_a_phase_is_the_difference_between_two_scrapes() -> None:
    first = Scrape.parse(
        scrape_text(
            hits=10,
            misses=5,
            timeouts=0,
            le5ms=14,
            total=15,
            secs=0.05,
            opened=2,
            resolved=1,
            cached=4,
            fills=5,
        ),
        at=0.0,
    )
    second = Scrape.parse(
        scrape_text(
            hits=100,
            misses=15,
            timeouts=2,
            le5ms=110,
            total=117,
            secs=0.5,
            opened=12,
            resolved=3,
            cached=20,
            fills=15,
        ),
        at=1.0,
    )

    phase = cache_phase(first, second)

    assert (phase.gets, phase.hits, phase.misses, phase.timed) == (102, 90, 10, 102)
    assert phase.get_average == pytest.approx(0.45 / 102)
    assert phase.hit_rate == pytest.approx(90 / 102)
    assert phase.answered_hit_rate == pytest.approx(0.9)
    assert phase.failures == {"timeout": 2}
    assert phase.pool_wait_seconds == pytest.approx(0.225)  # the read role only
    assert phase.pool_wait_average == pytest.approx(0.225 / 102)
    assert phase.failed_operations == 2
    assert phase.get_buckets == {0.005: 96.0, INF: 102.0}  # the write role's SETs left out
    assert (phase.connections_opened, phase.dns_lookups, phase.dns_cached) == (10, 2, 16)
    assert fills_done(second) - fills_done(first) == 10


def test_bucket_delta_keeps_the_later_bounds() -> None:
    assert bucket_delta({0.01: 1.0}, {0.01: 4.0, INF: 6.0}) == {0.01: 3.0, INF: 6.0}


# -- the request schedule ------------------------------------------------------------------------


def test_the_schedule_has_exactly_the_misses_asked_for_each_cold_post_once() -> None:
    hot, cold = list(range(1, 11)), list(range(11, 101))

    schedule = request_schedule(200, 0.9, hot, cold, seed=7)

    misses = [post for post in schedule if post in cold]
    assert len(schedule) == 200
    assert misses == cold[:20]  # in order, each once: never asked for before
    assert all(post in hot for post in schedule if post not in cold)
    assert schedule == request_schedule(200, 0.9, hot, cold, seed=7)
    assert schedule != request_schedule(200, 0.9, hot, cold, seed=8)


def test_the_schedule_needs_enough_cold_posts() -> None:
    with pytest.raises(ValueError, match="20 misses need 20 cold posts"):
        request_schedule(200, 0.9, [1], list(range(2, 12)), seed=0)
    assert request_schedule(3, 0.0, [], [1, 2, 3], seed=0) == [1, 2, 3]


# -- the table and the target --------------------------------------------------------------------


def cache(*, average: float, le10ms: int, timed: int = 100, opened: int, dns: int) -> CachePhase:
    return CachePhase(
        gets=timed,
        hits=90,
        misses=10,
        near_hits=0,
        timed=timed,
        get_seconds=average * timed,
        get_buckets={0.01: float(le10ms), 1.0: float(timed), INF: float(timed)},
        failures={},
        pool_wait_seconds=0.5 * average * timed,
        connections_opened=opened,
        dns_lookups=dns,
        dns_cached=0,
    )


def run(profile: str, number: int, *, rate: float, average: float, le10ms: int,
        opened: int, dns: int) -> ProfileRun:  # fmt: skip
    def phase(elapsed: float) -> Phase:
        return Phase(
            requests=100,
            completed=round(rate * elapsed),
            errors=0,
            first_error=None,
            elapsed=elapsed,
            latency={q: 100 / rate * (1 + q / 100) for q in PERCENTILES},
            cache=cache(average=average, le10ms=le10ms, opened=opened, dns=dns),
            proxy_accepted=opened,
            cpu=Cpu(
                server=0.5 * elapsed,
                proxy=0.1 * elapsed,
                load=0.1 * elapsed,
                redis=0.05 * elapsed,
                postgres=0.05 * elapsed,
                machine=1.0 * elapsed,
            ),
        )

    return ProfileRun(profile, number, items=phase(1.0), listing=phase(2.0), warmed=10)


BEFORE_RUNS = [
    run("before", 1, rate=200, average=0.45, le10ms=0, opened=1000, dns=100),
    run("before", 2, rate=100, average=0.50, le10ms=0, opened=1000, dns=100),
]
TUNED_RUNS = [
    run("tuned", 1, rate=4000, average=0.003, le10ms=100, opened=20, dns=0),
    run("tuned", 2, rate=1000, average=0.004, le10ms=99, opened=20, dns=0),
]


def test_the_table_shows_the_seed_next_to_the_medians_and_paired_ratios() -> None:
    rows = {row[0]: row for row in table_rows([*BEFORE_RUNS, *TUNED_RUNS])}

    assert len(rows) == len(ROWS)
    assert all(len(row) == len(COLUMNS) for row in rows.values())
    average = rows["cache GET avg, service (ms)"]
    assert average[1:3] == ("450", "< 5")
    assert average[3:5] == ("475", "3.5")
    # Paired: run 1 450/3 = 150x, run 2 500/4 = 125x; the median of the two.
    assert average[5] == "137.5x"
    throughput = rows["GET /api/v1/posts/{id} req/s"]
    assert throughput[2] == "90x"
    assert throughput[3:5] == ("150", "2,500")
    assert throughput[5] == "15.0x"  # 4000/200 = 20x and 1000/100 = 10x
    p99 = rows["cache GET p99, service (ms)"]
    assert p99[1:3] == ("> 500", "< 10")
    assert p99[4].endswith("(0-10]")
    assert p99[3].endswith("(10-1000]")
    assert rows["... of which pool wait, avg (ms)"][3:] == ("238", "1.75", "-")
    # Both loads: each of the two phases opened `opened` connections.
    assert rows["Redis connections opened"][3:] == ("2,000", "40", "50.0x")
    assert rows["DNS lookups made"][3:5] == ("200", "0")
    assert rows["DNS lookups made"][5] == "-"  # no ratio to a zero
    assert rows["errors: requests / cache ops"][3:5] == ("0 / 0", "0 / 0")
    assert rows["cache hit rate: of GETs (of answered)"][3] == "90.0% (90.0%)"


def test_the_target_judges_the_service_p99_by_its_bucket_and_the_throughput_ratio() -> None:
    met = check_target([*BEFORE_RUNS, *TUNED_RUNS], connections=100)

    assert met.p99_upper == 0.01
    assert met.throughput_ratio == 15.0
    assert met.met
    assert "met" in met.lines()[0]
    assert "NOT" not in met.lines()[0]
    assert "Little's law: 100 connections / 2,500 req/s = 40 ms" in met.lines()[1]

    slow_tuned = [
        run("tuned", 1, rate=1000, average=0.02, le10ms=50, opened=20, dns=0),
        run("tuned", 2, rate=1000, average=0.02, le10ms=50, opened=20, dns=0),
    ]
    missed = check_target([*BEFORE_RUNS, *slow_tuned], connections=100)

    assert missed.p99_upper == 1.0
    assert missed.throughput_ratio == 7.5
    assert not missed.p99_met
    assert not missed.throughput_met
    assert missed.lines()[0].count("NOT met") == 2


def test_the_cpu_line_shares_a_core_and_names_what_else_ran() -> None:
    line = cpu_line(BEFORE_RUNS, 2)

    assert line == (
        "server 50%, proxy 10%, load generator 10%, Redis 5%, PostgreSQL 5%, anything else 20%"
        " of one core (the machine: 100% of 2 cores)"
    )


def test_the_report_prints_the_table_the_conditions_and_the_target() -> None:
    report = SeedReport(
        options=SeedBenchOptions(requests=100, posts=100, runs=2),
        started_at="2025-01-01T00:00:00+00:00",
        runs=[*BEFORE_RUNS, *TUNED_RUNS],
        seconds=12.5,
        cpus=2,
        database="postgresql+asyncpg://postgres@127.0.0.1:5432/postal_bench_x",
        scratch_database=True,
        key_prefixes=["a:", "b:", "c:", "d:"],
    )
    console = Console(width=200, record=True)

    render_report(report, console)

    text = console.export_text()
    assert "postal bench seed: 100 posts in PostgreSQL, 100 requests x 100 connections" in text
    assert "cache GET avg, service (ms)" in text
    assert "proxy adding 1ms each way" in text
    assert "takes 20ms" in text
    assert "target: tuned cache GET p99 (service) <= 10 ms" in text
    assert "wall time: 12.5s" in text
    document = json.loads(json.dumps(report.to_json()))
    assert set(document["profiles"]) == {"before", "tuned"}


# -- options -------------------------------------------------------------------------------------


def test_the_proxy_url_keeps_credentials_and_database() -> None:
    assert (
        through_proxy("redis://:secret@127.0.0.1:6379/3", 4242)
        == "redis://:secret@redis.postal.test:4242/3"
    )
    assert through_proxy("redis://localhost", 1) == "redis://redis.postal.test:1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latency": 2.0}, "--latency must be between"),
        ({"dns_delay": -0.1}, "--dns-delay must be between"),
        ({"requests": 0}, "--requests must be between"),
        ({"connections": 5000}, "--connections must be between"),
        ({"hit_rate": 1.5}, "--hit-rate must be between"),
        ({"posts": 100, "requests": 1000}, "--posts 100 is too few: 1,000 requests"),
        ({"database_url": "sqlite+aiosqlite:///x.db"}, r"expected postgresql\+asyncpg"),
    ],
)
def test_bad_options_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BenchError, match=message):
        SeedBenchOptions(**changes).check()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "redis://192.0.2.1:6379/0",
        "rediss://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0,redis://192.0.2.1:6379/0",  # a second host elsewhere
    ],
)
def test_only_a_plain_loopback_redis_is_accepted(url: str) -> None:
    with pytest.raises(NotLoopback):
        SeedBenchOptions(redis_url=url).check()


def test_the_default_options_are_the_seeds() -> None:
    options = SeedBenchOptions()
    options.check()

    assert (options.requests, options.connections, options.posts) == (10_000, 100, 10_000)
    assert (options.hot_posts, options.misses) == (1_000, 1_000)


def test_near_cache_hits_are_hits_of_reads_no_get_was_sent_for() -> None:
    phase = replace(cache(average=0.001, le10ms=100, opened=0, dns=0), near_hits=300)
    assert phase.hit_rate == pytest.approx((300 + 90) / (300 + 100))
    assert phase.answered_hit_rate == pytest.approx((300 + 90) / (300 + 100))
