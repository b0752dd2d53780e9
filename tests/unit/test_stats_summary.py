"""`postal stats`' arithmetic: scrapes parsed, rates, hit rate, percentiles from buckets.

The scrapes are rendered by Postal's own collectors (`PostalMetrics`, in-process), so the parsing
is tested against the very text `/metrics` serves.
"""

from __future__ import annotations

import math

import pytest

from postal.observability.metrics import PostalMetrics
from postal.stats.scrape import Scrape, ScrapeError
from postal.stats.summary import quantile, summarize

INF = math.inf


def scrape(metrics: PostalMetrics, at: float) -> Scrape:
    return Scrape.parse(metrics.render().decode(), at)


def gets(metrics: PostalMetrics, outcome: str, count: int, seconds: float) -> None:
    for _ in range(count):
        metrics.cache_operations.labels("read", "GET", outcome).inc()
        metrics.cache_operation_seconds.labels("read", "GET").observe(seconds)


# -- quantile ------------------------------------------------------------------------------------


def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    buckets = [(0.001, 0.0), (0.01, 10.0), (INF, 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.0055)
    assert quantile(0.99, buckets) == pytest.approx(0.00991)


def test_quantile_starts_from_zero_and_stops_at_the_last_finite_bound() -> None:
    assert quantile(0.5, [(0.002, 4.0), (INF, 4.0)]) == pytest.approx(0.001)
    assert quantile(0.99, [(0.001, 1.0), (0.01, 1.0), (INF, 100.0)]) == 0.01


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(0.001, 0.0), (INF, 0.0)]) is None


# -- scrapes -------------------------------------------------------------------------------------


def test_a_scrape_sums_series_by_label() -> None:
    metrics = PostalMetrics()
    gets(metrics, "hit", 3, 0.0002)
    gets(metrics, "miss", 2, 0.0002)
    parsed = scrape(metrics, at=0.0)
    assert parsed.total("postal_cache_operations_total", role="read") == 5
    assert parsed.total("postal_cache_operations_total", outcome="hit") == 3
    assert parsed.total("postal_cache_operations_total", role="write") == 0
    assert parsed.buckets("postal_cache_operation_seconds")[-1] == (INF, 5.0)


def test_text_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(ScrapeError):
        Scrape.parse("<html>not metrics</html>\n", at=0.0)


# -- summaries -----------------------------------------------------------------------------------


def test_rates_and_hit_rate_are_over_the_interval_and_since_the_start() -> None:
    metrics = PostalMetrics()
    gets(metrics, "hit", 10, 0.0002)
    gets(metrics, "miss", 10, 0.0002)
    before = scrape(metrics, at=100.0)
    gets(metrics, "hit", 30, 0.003)
    gets(metrics, "miss", 10, 0.003)
    after = scrape(metrics, at=102.0)

    summary = summarize(before, after)
    assert summary.seconds == 2.0
    assert summary.cache.hit_rate == pytest.approx(0.75)
    assert summary.cache.hit_rate_since_start == pytest.approx(40 / 60)
    assert summary.cache.ops_per_second == pytest.approx(20.0)
    assert summary.cache.error_rate == 0
    (command,) = summary.cache.commands
    assert (command.role, command.command, command.basis) == ("read", "GET", "interval")
    assert command.outcomes == {"hit": 30, "miss": 10}
    # All 40 operations of the interval took 3 ms: in the (2.5 ms, 5 ms] bucket, none below.
    assert command.p50_ms is not None
    assert 2.5 < command.p50_ms <= 5.0
    assert command.p99_ms is not None
    assert 2.5 < command.p99_ms <= 5.0


def test_with_no_traffic_in_the_interval_percentiles_are_since_the_start() -> None:
    metrics = PostalMetrics()
    gets(metrics, "hit", 5, 0.0002)
    before = scrape(metrics, at=0.0)
    after = scrape(metrics, at=1.0)
    summary = summarize(before, after)
    (command,) = summary.cache.commands
    assert command.ops_per_second == 0
    assert command.basis == "since_start"
    assert command.p50_ms is not None
    assert 0.1 < command.p50_ms <= 0.25
    assert summary.cache.hit_rate is None  # nothing read in the interval
    assert summary.cache.hit_rate_since_start == 1.0


def test_errors_count_against_the_error_rate_and_the_command() -> None:
    metrics = PostalMetrics()
    before = scrape(metrics, at=0.0)
    gets(metrics, "hit", 6, 0.0002)
    gets(metrics, "timeout", 2, 0.1)
    gets(metrics, "circuit_open", 2, 0.0)
    summary = summarize(before, scrape(metrics, at=1.0))
    assert summary.cache.error_rate == pytest.approx(0.4)
    assert summary.cache.commands[0].errors_per_second == pytest.approx(4.0)
    assert summary.cache.hit_rate == pytest.approx(0.6)


def test_a_counter_that_went_down_was_reset_and_counts_from_zero() -> None:
    old, restarted = PostalMetrics(), PostalMetrics()
    gets(old, "hit", 100, 0.0002)
    gets(restarted, "hit", 7, 0.0002)
    summary = summarize(scrape(old, at=0.0), scrape(restarted, at=1.0))
    assert summary.cache.commands[0].outcomes == {"hit": 7}


def test_pools_breakers_fills_and_invalidations() -> None:
    metrics = PostalMetrics()
    metrics.pool_max_connections.labels("read").set(50)
    metrics.pool_connections.labels("read", "in_use").set(3)
    metrics.pool_connections.labels("read", "idle").set(17)
    metrics.pool_timeouts.labels("read").inc(1)
    metrics.pool_closed.labels("read", "max_idle").inc(4)
    metrics.breaker_state.labels("read").set(2)
    metrics.cache_fills.labels("done").inc(5)
    before = scrape(metrics, at=0.0)
    metrics.pool_timeouts.labels("read").inc(2)
    metrics.pool_opened.labels("read").inc(3)
    metrics.pool_wait_seconds.labels("read").observe(0.02)
    metrics.cache_fills.labels("done").inc(2)
    metrics.cache_fills.labels("failed").inc(1)
    metrics.cache_invalidations.labels("done").inc(4)
    summary = summarize(before, scrape(metrics, at=2.0))

    (pool,) = summary.pools
    assert (pool.role, pool.in_use, pool.idle, pool.max) == ("read", 3, 17, 50)
    assert (pool.timeouts, pool.timeouts_total) == (2, 3)
    assert (pool.opened, pool.opened_total) == (3, 3)
    assert pool.closed_total == {"max_idle": 4}
    assert pool.waits_per_second == pytest.approx(0.5)
    assert pool.wait_p99_ms is not None
    assert 10 < pool.wait_p99_ms <= 25
    assert pool.breaker == "open"
    assert summary.fills.interval == {"done": 2, "failed": 1}
    assert summary.fills.total == {"done": 7, "failed": 1}
    assert summary.invalidations.interval == {"done": 4}


def test_http_routes_with_their_server_errors_busiest_first() -> None:
    metrics = PostalMetrics()
    before = scrape(metrics, at=0.0)
    for _ in range(8):
        metrics.http_request_seconds.labels("GET", "/api/v1/posts/{post_id}", "200").observe(0.001)
    metrics.http_request_seconds.labels("GET", "/api/v1/posts/{post_id}", "503").observe(0.2)
    metrics.http_request_seconds.labels("POST", "/api/v1/posts", "201").observe(0.004)
    summary = summarize(before, scrape(metrics, at=1.0))
    busiest, other = summary.http
    assert (busiest.method, busiest.route) == ("GET", "/api/v1/posts/{post_id}")
    assert busiest.requests_per_second == 9
    assert busiest.server_errors_per_second == 1
    assert (other.route, other.requests_per_second, other.server_errors_per_second) == (
        "/api/v1/posts",
        1,
        0,
    )
