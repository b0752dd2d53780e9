"""The pure parts of the metrics: batching, running totals, route templates, the HTTP middleware,
the multiprocess directory, the names and the key expressions. No I/O but temporary files."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.api.fast_reads import ROUTE as FAST_LANE_ROUTE
from postal.api.http_metrics import HttpMetrics, RouteTemplates
from postal.cache import (
    TUNED,
    BreakerChange,
    BreakerState,
    CacheClient,
    CacheEvent,
    EarlyRefreshConfig,
    Guarded,
    GuardedKey,
    Invalidator,
    Outcome,
    PoolWaitEvent,
    ReadThrough,
    RefreshOutcome,
    guarded,
)
from postal.observability.batching import Batches, HistogramBatch
from postal.observability.cache_metrics import (
    BreakerMetrics,
    CacheOperationMetrics,
    CumulativeCounters,
    EarlyRefreshSampler,
    PoolWaitMetrics,
    instrument_cache,
)
from postal.observability.metrics import (
    HISTOGRAMS,
    KEY_EXPRESSIONS,
    LATENCY_BUCKETS,
    METRIC_NAMES,
    SERIES_NAMES,
    PostalMetrics,
)
from postal.observability.multiproc import (
    LOCK_FILE,
    MULTIPROC_ENV,
    MetricsDirectoryInUse,
    dead_worker_pids,
    metrics_directory,
)
from tests.support.metrics_text import Scrape

# -- batching -------------------------------------------------------------------------------------

# On the bounds, between them, below the first and above the last (+Inf).
VALUES = [0.0, 0.0001, 0.00011, 0.0003, 0.01, 0.0100001, 4.9, 5.0, 7.5, 120.0, 0.0005]


def histogram_text(feed: str) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ("role",), registry=registry, buckets=LATENCY_BUCKETS)
    if feed == "direct":
        for value in VALUES:
            histogram.labels("read").observe(value)
    else:
        batch = HistogramBatch(histogram.labels("read"), LATENCY_BUCKETS)
        for value in VALUES[:5]:
            batch.observe(value)
        batch.flush()
        for value in VALUES[5:]:
            batch.observe(value)
        batch.flush()
        batch.flush()  # nothing pending: nothing added
    return "\n".join(
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    )


def test_a_batched_histogram_flushes_exactly_what_direct_observations_give() -> None:
    assert histogram_text("batched") == histogram_text("direct")


MULTIPROCESS_FEED = """
import sys
from postal.observability.metrics import LATENCY_BUCKETS, PostalMetrics
metrics = PostalMetrics(multiprocess_dir=sys.argv[1])
assert metrics.multiprocess
values = [float(value) for value in sys.argv[2:]]
histogram = metrics.http_request_seconds
batch = metrics.batches.histogram(histogram, LATENCY_BUCKETS, "GET", "batched", "200")
for value in values[:5]:
    batch.observe(value)
metrics.refresh()
for value in values[5:]:
    batch.observe(value)
for value in values:
    histogram.labels("GET", "direct", "200").observe(value)
sys.stdout.write(metrics.render().decode())
"""


def test_in_multiprocess_mode_a_batch_flushes_what_direct_observations_give(
    tmp_path: Path,
) -> None:
    """prometheus_client picks its file-backed values at import: a process of its own."""
    environ = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    command = [sys.executable, "-c", MULTIPROCESS_FEED, str(tmp_path), *map(str, VALUES)]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    scrape = Scrape.parse(result.stdout)
    name = "postal_http_request_duration_seconds"

    def series(route: str) -> dict[tuple[str, str], float]:
        return {
            (series, dict(labels).get("le", "")): value
            for (series, labels), value in scrape.samples.items()
            if series.startswith(name) and ("route", route) in labels
        }

    batched, direct = series("batched"), series("direct")
    assert batched == direct
    assert batched[(name + "_count", "")] == len(VALUES)
    assert batched[(name + "_bucket", "0.0001")] == 2  # 0.0 and 0.0001: a bound is inclusive
    assert batched[(name + "_sum", "")] == pytest.approx(sum(VALUES))
    assert list(tmp_path.glob("histogram_*.db"))  # the values went through the files


def test_a_batch_refuses_bounds_other_than_the_histograms() -> None:
    histogram = Histogram("h", "h", registry=CollectorRegistry(), buckets=(0.1, 1.0))
    with pytest.raises(ValueError, match="bounds"):
        HistogramBatch(histogram, LATENCY_BUCKETS)


def test_batched_counters_reach_the_counter_only_at_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("c_total", "c", ("outcome",), registry=registry)
    batches = Batches()
    hit = batches.counter(counter, "hit")
    assert batches.counter(counter, "hit") is hit  # one batch per label values
    for _ in range(3):
        hit.inc()
    assert registry.get_sample_value("c_total", {"outcome": "hit"}) == 0
    batches.flush()
    assert registry.get_sample_value("c_total", {"outcome": "hit"}) == 3
    batches.flush()
    assert registry.get_sample_value("c_total", {"outcome": "hit"}) == 3


def test_cache_events_are_counted_once_refreshed() -> None:
    metrics = PostalMetrics()
    listener = CacheOperationMetrics(metrics)
    for outcome, duration in ((Outcome.HIT, 0.0002), (Outcome.HIT, 0.0004), (Outcome.MISS, 0.02)):
        event = CacheEvent("read", "GET", "post:{1}", duration, outcome, in_use=0, idle=1)
        listener(event)
    scrape = Scrape.parse(metrics.render().decode())
    ops = "postal_cache_operations_total"
    assert scrape.value(ops, role="read", command="GET", outcome="hit") == 2
    assert scrape.value(ops, role="read", command="GET", outcome="miss") == 1
    seconds = "postal_cache_operation_seconds_bucket"
    assert scrape.value(seconds, role="read", command="GET", le="0.0005") == 2
    assert scrape.value(seconds, role="read", command="GET", le="0.025") == 3
    assert scrape.value("postal_cache_operation_seconds_sum", role="read", command="GET") == (
        pytest.approx(0.0206)
    )


# -- running totals and the breaker gauge ---------------------------------------------------------


def test_running_totals_become_increments_and_a_restart_counts_from_zero() -> None:
    registry = CollectorRegistry()
    counter = Counter("opened_total", "o", registry=registry)
    totals = CumulativeCounters()
    for total in (0, 3, 3, 10, 2, 5):  # 2: the source started over
        totals.advance(counter, "opened", total)
    assert registry.get_sample_value("opened_total") == 10 + 2 + 3


def test_the_breaker_gauge_says_0_closed_1_half_open_2_open() -> None:
    metrics = PostalMetrics()
    breakers = BreakerMetrics(metrics)
    seen = []
    labels = {"role": "read", "node": "10.0.0.1:6379"}
    for new in (BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED):
        breakers(BreakerChange("read", BreakerState.CLOSED, new, 0.0, node="10.0.0.1:6379"))
        assert metrics.registry is not None
        seen.append(metrics.registry.get_sample_value("postal_cache_breaker_state", labels))
    assert seen == [2, 1, 0]


def test_each_nodes_breaker_has_its_own_series() -> None:
    """One replica's open breaker shows as that replica's, the others' stay closed."""
    metrics = PostalMetrics()
    breakers = BreakerMetrics(metrics)
    breakers.set("read", "10.0.0.1:6379", BreakerState.CLOSED)
    breakers.set("read", "10.0.0.2:6379", BreakerState.CLOSED)
    breakers(BreakerChange("read", BreakerState.CLOSED, BreakerState.OPEN, 0.0, "10.0.0.2:6379"))
    breakers(BreakerChange("write", BreakerState.CLOSED, BreakerState.OPEN, 0.0, "10.0.0.9:6379"))
    scrape = Scrape.parse(metrics.render().decode())
    state = "postal_cache_breaker_state"
    assert scrape.value(state, role="read", node="10.0.0.1:6379") == 0
    assert scrape.value(state, role="read", node="10.0.0.2:6379") == 2
    assert scrape.value(state, role="write", node="10.0.0.9:6379") == 2  # a node seen first here
    assert scrape.label_values(state, "node") == {"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.9:6379"}


def test_pool_waits_are_observed_by_node_a_later_node_included() -> None:
    metrics = PostalMetrics()
    waits = PoolWaitMetrics(metrics, [("read", "a:1"), ("read", "b:2")])
    before = Scrape.parse(metrics.render().decode())
    count = "postal_pool_wait_seconds_count"
    # Exported at 0 from the start for the nodes known then.
    assert before.value(count, role="read", node="a:1") == 0
    assert before.value(count, role="read", node="b:2") == 0
    waits(PoolWaitEvent("read", 0.002, True, node="b:2"))
    waits(PoolWaitEvent("read", 0.003, False, node="b:2"))
    waits(PoolWaitEvent("read", 0.004, True, node="c:3"))  # a node a cluster added later
    after = Scrape.parse(metrics.render().decode())
    assert after.value(count, role="read", node="a:1") == 0
    assert after.value(count, role="read", node="b:2") == 2
    assert after.value(count, role="read", node="c:3") == 1
    assert after.value("postal_pool_wait_seconds_sum", role="read", node="c:3") == (
        pytest.approx(0.004)
    )


def test_the_sampler_exports_each_nodes_pool_by_role_and_node() -> None:
    """Two read replicas and a primary: a series set per node, none per role alone. Nothing
    dials: the client is never started, so its pools are empty and sized by the profile."""
    cache = CacheClient.create(
        read_url="redis://10.0.0.1:6379/0,redis://10.0.0.2:6380/0",
        write_url="redis://10.0.0.1:6379/0",
        profile=TUNED,
    )
    metrics = PostalMetrics()
    instrument_cache(metrics, cache, ReadThrough(cache), Invalidator(cache, give_up_after=1.0))
    scrape = Scrape.parse(metrics.render().decode())
    places = {("read", "10.0.0.1:6379"), ("read", "10.0.0.2:6380"), ("write", "10.0.0.1:6379")}
    for name in (
        "postal_pool_max_connections",
        "postal_pool_timeouts_total",
        "postal_pool_connections_opened_total",
        "postal_pool_wait_seconds_count",
        "postal_cache_breaker_state",
    ):
        found = {
            (dict(labels)["role"], dict(labels)["node"])
            for series, labels in scrape.samples
            if series == name
        }
        assert found == places, name
    max_size = "postal_pool_max_connections"
    assert scrape.value(max_size, role="read", node="10.0.0.2:6380") == TUNED.read_pool.max_size
    assert scrape.value(max_size, role="write", node="10.0.0.1:6379") == TUNED.write_pool.max_size
    in_use = scrape.value(
        "postal_pool_connections", role="read", node="10.0.0.1:6379", state="in_use"
    )
    assert in_use == 0
    closed = "postal_pool_connections_closed_total"
    assert scrape.value(closed, role="read", node="10.0.0.2:6380", reason="error") == 0


# -- HTTP: route templates and the middleware -----------------------------------------------------


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("not called")


class ExpiredHits:
    """A cache whose every read is a hit that expired long ago (by the read-through's clock,
    which says 1000), and whose fills all land."""

    async def get_guarded(self, key: GuardedKey) -> Guarded:
        return Guarded(b"cached", 90_001, expires_at=0.0)

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool:
        return True


async def test_early_refreshes_are_exported_by_outcome() -> None:
    async def load() -> tuple[bytes, float]:
        return b"loaded", 60.0

    metrics = PostalMetrics()
    refreshing = EarlyRefreshConfig(max_in_flight=1)
    reads = ReadThrough(ExpiredHits(), early_refresh=refreshing, clock=lambda: 1000.0)
    sampler = EarlyRefreshSampler(metrics, reads)
    before = Scrape.parse(metrics.render().decode())
    name = "postal_cache_early_refreshes_total"
    assert {before.value(name, outcome=o.value) for o in RefreshOutcome} == {0.0}
    assert await reads.get(guarded("post", "1"), load) == b"cached"  # refresh started...
    assert await reads.get(guarded("post", "2"), load) == b"cached"  # ...and this one dropped
    await reads.drain(1.0)
    sampler.sample()
    sampler.sample()  # a second sample adds nothing: the counts are running totals
    after = Scrape.parse(metrics.render().decode())
    assert after.value(name, outcome="refreshed") == 1
    assert after.value(name, outcome="dropped") == 1
    assert after.value(name, outcome="failed") == 0


def test_route_templates_come_from_the_route_or_its_endpoint() -> None:
    plain = Route("/items/{item_id:int}", endpoint)
    templates = RouteTemplates([plain])
    assert templates({"route": FAST_LANE_ROUTE}) == "/api/v1/posts/{post_id}"
    assert templates({"route": plain}) == "/items/{item_id}"  # converters dropped
    assert templates({"endpoint": endpoint}) == "/items/{item_id}"
    assert templates({"endpoint": len}) == "unmatched"  # an endpoint of no known route
    assert templates({}) == "unmatched"
    # Answered before the router ran (the write guard's 401 and 413): matched here, the method
    # told apart as the router does, and anything else still unmatched.
    listing = Route("/items", endpoint, methods=["GET"])
    creating = Route("/items", endpoint, methods=["POST"])
    templates = RouteTemplates([plain, listing, creating])
    assert templates({"type": "http", "method": "POST", "path": "/items"}) == "/items"
    assert templates({"type": "http", "method": "PUT", "path": "/items/3"}) == "/items/{item_id}"
    assert templates({"type": "http", "method": "PUT", "path": "/items/x"}) == "unmatched"
    assert templates({"type": "http", "method": "POST", "path": "/wp-login.php"}) == "unmatched"


def answering(status: int, *, route: Route | None = None, fail: bool = False) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if route is not None:
            scope["route"] = route
        if fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def call(app: HttpMetrics, method: str, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


async def test_the_middleware_labels_method_template_and_status() -> None:
    metrics = PostalMetrics()
    route = Route("/items/{item_id}", endpoint)
    found = HttpMetrics(answering(200, route=route), metrics=metrics)
    missing = HttpMetrics(answering(404), metrics=metrics)
    failing = HttpMetrics(answering(0, fail=True), metrics=metrics)
    sent = await call(found, "GET", "/items/1")
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    await call(found, "GET", "/items/2")
    for index in range(5):
        await call(missing, f"X-SCAN-{index}", f"/random/{index}")
    with pytest.raises(RuntimeError):
        await call(failing, "POST", "/items/3")
    scrape = Scrape.parse(metrics.render().decode())
    count = "postal_http_request_duration_seconds_count"
    assert scrape.value(count, method="GET", route="/items/{item_id}", status="200") == 2
    assert scrape.value(count, method="other", route="unmatched", status="404") == 5
    assert scrape.value(count, method="POST", route="unmatched", status="500") == 1


# -- names and expressions ------------------------------------------------------------------------

# PromQL words (functions, operators, grouping labels) that the expressions use besides series.
PROMQL_FUNCTIONS = {
    "sum", "rate", "by", "histogram_quantile", "le", "role", "node", "state", "or", "vector",
}  # fmt: skip


def test_the_key_expressions_name_only_real_series() -> None:
    assert set(KEY_EXPRESSIONS) == {
        "hit_rate", "average_latency", "p99_latency", "pool_usage", "error_rate",
    }  # fmt: skip
    for name, expression in KEY_EXPRESSIONS.items():
        without_strings = re.sub(r'"[^"]*"', "", expression)
        without_matchers = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
        identifiers = set(re.findall(r"[a-z_][a-z0-9_]*", without_matchers))
        series = identifiers - PROMQL_FUNCTIONS
        assert series, name
        assert series <= SERIES_NAMES, (name, series - SERIES_NAMES)


def test_the_names_are_the_issues_and_every_metric_is_exposed() -> None:
    # Issue 5's thirteen, the replica waits, the admission refusals, the near cache's and the
    # early refreshes, the read pipeline's: renaming one breaks
    # dashboards and alerts.
    assert {
        "postal_cache_operations_total",
        "postal_cache_operation_seconds",
        "postal_pool_connections",
        "postal_pool_max_connections",
        "postal_pool_wait_seconds",
        "postal_pool_timeouts_total",
        "postal_pool_connections_opened_total",
        "postal_pool_connections_closed_total",
        "postal_cache_fills_total",
        "postal_cache_early_refreshes_total",
        "postal_cache_invalidations_total",
        "postal_cache_breaker_state",
        "postal_dns_lookups_total",
        "postal_replica_waits_total",
        "postal_http_request_duration_seconds",
        "postal_http_requests_refused_total",
        "postal_http_requests_deferred_total",
        "postal_near_cache_reads_total",
        "postal_near_cache_evictions_total",
        "postal_near_cache_flushes_total",
        "postal_near_cache_invalidations_received_total",
        "postal_near_cache_bytes",
        "postal_near_cache_entries",
        "postal_near_cache_tracking_live",
        "postal_read_pipeline_events_total",
        "postal_read_pipeline_in_flight",
    } == METRIC_NAMES
    assert all(name.startswith("postal_") for name in METRIC_NAMES)
    assert {name + "_bucket" for name in HISTOGRAMS} <= SERIES_NAMES
    text = PostalMetrics().render().decode()
    helped = set(re.findall(r"^# HELP (\S+)", text, re.MULTILINE))
    # prometheus_client's `_created` gauge of a counter with a sample (in-process only): an
    # unlabelled counter has one from the start
    created = {name for name in helped if name.endswith("_created")}
    assert helped - created == METRIC_NAMES


# -- multiprocess ---------------------------------------------------------------------------------


def test_one_worker_collects_in_process_and_drops_the_variable() -> None:
    environ = {MULTIPROC_ENV: "/somewhere"}
    with metrics_directory(1, environ, imported=()) as path:
        assert path is None
        assert MULTIPROC_ENV not in environ


def test_several_workers_get_a_fresh_directory_removed_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    environ: dict[str, str] = {}
    with metrics_directory(2, environ, imported=()) as path:
        assert path is not None
        assert path.is_dir()
        assert environ[MULTIPROC_ENV] == str(path)
        (path / "counter_123.db").write_bytes(b"x")
    assert not path.exists()
    assert MULTIPROC_ENV not in environ


def test_the_operators_directory_is_emptied_of_metric_files_only(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_99.db").write_bytes(b"stale")
    (directory / "notes.txt").write_text("keep me")
    environ = {MULTIPROC_ENV: str(directory)}
    with metrics_directory(3, environ, imported=()) as path:
        assert path == directory
        assert sorted(file.name for file in directory.iterdir()) == [LOCK_FILE, "notes.txt"]
        (directory / "histogram_100.db").write_bytes(b"x")
    assert sorted(file.name for file in directory.iterdir()) == [LOCK_FILE, "notes.txt"]
    assert environ[MULTIPROC_ENV] == str(directory)


def test_a_directory_another_running_serve_uses_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Emptying it would drop the other server's counts, and sharing it would sum both."""
    directory = tmp_path / "prom"
    first_env = {MULTIPROC_ENV: str(directory)}
    with metrics_directory(2, first_env, imported=()) as path:
        assert path is not None
        (directory / "counter_100.db").write_bytes(b"the first server's")
        with (
            pytest.raises(MetricsDirectoryInUse, match="in use by another") as refused,
            metrics_directory(2, {MULTIPROC_ENV: str(directory)}, imported=()),
        ):
            pass
        assert str(directory) in str(refused.value)
        assert (directory / "counter_100.db").read_bytes() == b"the first server's"
    assert not (directory / "counter_100.db").exists()  # emptied by its owner, at exit
    with metrics_directory(2, {MULTIPROC_ENV: str(directory)}, imported=()) as path:
        assert path == directory  # free again once the first has exited


def test_setting_up_after_prometheus_client_was_imported_is_refused() -> None:
    with (
        pytest.raises(RuntimeError, match="imported before"),
        metrics_directory(2, {}, imported={"prometheus_client"}),
    ):
        pass


def test_dead_workers_are_found_by_their_live_gauge_files(tmp_path: Path) -> None:
    for name in ("gauge_livesum_11.db", "gauge_livemax_11.db", "gauge_livesum_12.db",
                 "counter_13.db", f"gauge_livesum_{os.getpid()}.db"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    assert dead_worker_pids(tmp_path, is_alive=lambda pid: pid == 12) == [11]


def test_a_variable_set_too_late_falls_back_to_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="postal.metrics"):
        metrics = PostalMetrics.from_environment({MULTIPROC_ENV: str(tmp_path)})
    assert not metrics.multiprocess  # this test process imported prometheus_client without it
    assert metrics.registry is not None
    assert "imported before" in caplog.text
