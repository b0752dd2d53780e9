"""`postal stats`' arithmetic: scrapes parsed, rates, hit rate, percentiles from buckets; and its
pools table, a row per node.

The scrapes are rendered by Postal's own collectors (`PostalMetrics`, in-process), so the parsing
is tested against the very text `/metrics` serves.
"""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from postal.observability.metrics import PostalMetrics
from postal.stats.collect import StatsReport
from postal.stats.render import render
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


def test_near_cache_hits_count_as_hits_and_as_reads_that_sent_no_get() -> None:
    metrics = PostalMetrics()
    before = scrape(metrics, at=100.0)
    assert summarize(before, before).cache.near_share is None  # none: nothing to show
    gets(metrics, "hit", 10, 0.0002)
    gets(metrics, "miss", 10, 0.0002)  # near-cache misses went on to these GETs
    metrics.near_reads.labels("hit").inc(60)
    metrics.near_reads.labels("miss").inc(20)
    after = scrape(metrics, at=102.0)

    cache = summarize(before, after).cache
    assert cache.hit_rate == pytest.approx(70 / 80)  # 60 from memory + 10 Redis hits, of 80
    assert cache.near_share == pytest.approx(60 / 80)
    assert cache.hit_rate_since_start == pytest.approx(70 / 80)
    assert cache.ops_per_second == pytest.approx(10.0)  # Redis operations only


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


NODE = "10.0.0.1:6379"


def test_pools_breakers_fills_and_invalidations() -> None:
    metrics = PostalMetrics()
    metrics.pool_max_connections.labels("read", NODE).set(50)
    metrics.pool_connections.labels("read", NODE, "in_use").set(3)
    metrics.pool_connections.labels("read", NODE, "idle").set(17)
    metrics.pool_timeouts.labels("read", NODE).inc(1)
    metrics.pool_closed.labels("read", NODE, "max_idle").inc(4)
    metrics.breaker_state.labels("read", NODE).set(2)
    metrics.cache_fills.labels("done").inc(5)
    before = scrape(metrics, at=0.0)
    metrics.pool_timeouts.labels("read", NODE).inc(2)
    metrics.pool_opened.labels("read", NODE).inc(3)
    metrics.pool_wait_seconds.labels("read", NODE).observe(0.02)
    metrics.cache_fills.labels("done").inc(2)
    metrics.cache_fills.labels("failed").inc(1)
    metrics.cache_invalidations.labels("done").inc(4)
    summary = summarize(before, scrape(metrics, at=2.0))

    (pool,) = summary.pools
    assert (pool.role, pool.node, pool.in_use, pool.idle, pool.max) == ("read", NODE, 3, 17, 50)
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


def pool_of(metrics: PostalMetrics, role: str, node: str, *, in_use: int, cap: int) -> None:
    metrics.pool_max_connections.labels(role, node).set(cap)
    metrics.pool_connections.labels(role, node, "in_use").set(in_use)
    metrics.pool_connections.labels(role, node, "idle").set(cap - in_use)
    metrics.breaker_state.labels(role, node).set(0)


def test_a_row_per_node_each_with_its_own_figures() -> None:
    """Two read replicas and a primary: each node is a row of its own, by role then node; a
    wait, a timeout or an open breaker on one replica is that replica's only."""
    metrics = PostalMetrics()
    pool_of(metrics, "read", "10.0.0.2:6379", in_use=1, cap=50)
    pool_of(metrics, "read", "10.0.0.1:6379", in_use=4, cap=50)
    pool_of(metrics, "write", "10.0.0.1:6379", in_use=0, cap=20)
    before = scrape(metrics, at=0.0)
    metrics.pool_timeouts.labels("read", "10.0.0.2:6379").inc(3)
    metrics.pool_wait_seconds.labels("read", "10.0.0.2:6379").observe(0.02)
    metrics.breaker_state.labels("read", "10.0.0.2:6379").set(2)
    summary = summarize(before, scrape(metrics, at=1.0))

    rows = {(pool.role, pool.node): pool for pool in summary.pools}
    assert [(pool.role, pool.node) for pool in summary.pools] == [
        ("read", "10.0.0.1:6379"), ("read", "10.0.0.2:6379"), ("write", "10.0.0.1:6379"),
    ]  # fmt: skip
    first, second = rows["read", "10.0.0.1:6379"], rows["read", "10.0.0.2:6379"]
    assert (first.in_use, first.idle, first.max) == (4, 46, 50)
    assert (second.in_use, second.idle, second.max) == (1, 49, 50)
    assert (first.timeouts, second.timeouts) == (0, 3)
    assert (first.waits_per_second, second.waits_per_second) == (0, 1)
    assert (first.breaker, second.breaker) == ("closed", "open")
    assert rows["write", "10.0.0.1:6379"].max == 20


def test_metrics_without_the_node_label_give_a_row_per_role() -> None:
    """An older Postal's /metrics: its pools by role alone still show, with no node."""
    text = "\n".join(
        [
            "# TYPE postal_pool_max_connections gauge",
            'postal_pool_max_connections{role="read"} 50',
            "# TYPE postal_pool_connections gauge",
            'postal_pool_connections{role="read",state="in_use"} 2',
            'postal_pool_connections{role="read",state="idle"} 8',
            "# TYPE postal_cache_breaker_state gauge",
            'postal_cache_breaker_state{role="read"} 1',
            "",
        ]
    )
    (pool,) = summarize(Scrape.parse(text, 0.0), Scrape.parse(text, 1.0)).pools
    assert (pool.role, pool.node, pool.in_use, pool.idle, pool.max) == ("read", "", 2, 8, 50)
    assert pool.breaker == "half_open"


def test_the_pools_table_has_a_row_per_node_labelled_by_node() -> None:
    metrics = PostalMetrics()
    pool_of(metrics, "read", "10.0.0.1:6379", in_use=4, cap=50)
    pool_of(metrics, "read", "10.0.0.2:6379", in_use=1, cap=50)
    metrics.breaker_state.labels("read", "10.0.0.2:6379").set(2)
    summary = summarize(scrape(metrics, at=0.0), scrape(metrics, at=1.0))
    report = StatsReport(url="http://postal", time="now", status={}, summary=summary, redis=[])
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render(report))
    lines = console.export_text().splitlines()
    rows = [line for line in lines if "10.0.0." in line]
    assert len(rows) == 2
    first, second = (line.replace("│", " ").split() for line in rows)
    assert first[:5] == ["read", "10.0.0.1:6379", "4", "46", "50"]
    assert first[-1] == "closed"
    assert second[:5] == ["read", "10.0.0.2:6379", "1", "49", "50"]
    assert second[-1] == "open"


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
