"""`postal bench cache` run in-process for a fraction of a second against the test Redis."""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from rich.console import Console
from typer.testing import CliRunner

from postal.cache import Topology
from postal.cli import app
from postal_bench.cache import FLOOR, TARGETS, CacheBenchOptions, render_report, run_cache_bench
from postal_bench.errors import BenchError, NotLoopback
from postal_bench.loopback import require_loopback
from postal_bench.output import write_json
from postal_bench.redis_topologies import require_loopback_redis
from postal_bench.stats import COLUMNS, TOPOLOGY_COLUMNS, table_rows, topology_rows
from postal_testing.redis_servers import answers_ping

PROFILE_FIELDS = {
    "name",
    "topology",
    "description",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "errors",
    "ops_vs_ref",
    "p99_vs_ref",
    "note",
    "runs",
}
RUN_FIELDS = {
    "ops",
    "errors",
    "elapsed_s",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "first_error",
    "details",
}


def tiny(url: str, **changes: Any) -> CacheBenchOptions:
    """0.1 s of warm-up and 0.2 s measured, 10 tasks, one run, no redis-benchmark."""
    options = CacheBenchOptions(url=url, concurrency=10, duration=0.2, warmup=0.1, runs=1)
    return replace(options, **changes)


async def test_every_profile_completes_operations_and_the_json_has_its_shape(
    redis_url: str, tmp_path: Path
) -> None:
    seen: list[str] = []
    report = await run_cache_bench(
        tiny(redis_url), lambda label, elapsed, planned: seen.append(label)
    )

    names = [summary.name for summary in report.summaries]
    assert names == [target.name for target in TARGETS] + [FLOOR]
    for target in TARGETS:
        summary = report.summary(target.name)
        [run] = summary.runs
        assert run.ops > 0, f"{target.name}: {run.first_error}"
        assert summary.ops_per_s is not None
        assert summary.ops_per_s > 0
        assert summary.p50 is not None
        assert summary.p99 is not None
        assert summary.p999 is not None
        assert summary.p50 <= summary.p99 <= summary.p999
    assert report.summary("reference").ops_ratio == 1.0
    floor = report.summary(FLOOR)
    assert floor.runs == []
    assert floor.note is not None
    assert all(len(row) == len(COLUMNS) for row in table_rows(report.summaries))
    assert any("tuned · run 1/1" in label for label in seen)

    path = tmp_path / "out" / "bench.json"
    write_json(path, report.to_json())
    document = json.loads(path.read_text())
    assert document["benchmark"] == "cache"
    assert document["settings"]["concurrency"] == 10
    assert document["settings"]["reference"] == "reference"
    assert [profile["name"] for profile in document["profiles"]] == names
    for profile in document["profiles"]:
        assert set(profile) == PROFILE_FIELDS
        for run_document in profile["runs"]:
            assert set(run_document) == RUN_FIELDS
    tuned = next(profile for profile in document["profiles"] if profile["name"] == "tuned")
    assert tuned["ops_per_s"] > 0
    assert set(tuned["runs"][0]["details"]) == {"opened", "waits", "wait_time_s", "pool_timeouts"}
    assert set(document["target"]) >= {"ops_vs_ref", "p99_vs_ref", "met", "line"}
    assert document["target"]["line"].startswith("tuned vs reference: ")


async def test_the_bench_deletes_its_keys(redis_url: str) -> None:
    report = await run_cache_bench(tiny(redis_url, keys=50))
    client = redis.Redis.from_url(redis_url)
    try:
        left = [key async for key in client.scan_iter(match=f"{report.key_prefix}*")]
    finally:
        await client.aclose()
    assert report.key_prefix.startswith("postal-bench:")
    assert left == []


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark not installed")
async def test_redis_benchmark_is_the_floor_when_installed(redis_url: str) -> None:
    options = tiny(redis_url, redis_benchmark=shutil.which("redis-benchmark"))
    floor = (await run_cache_bench(options)).summary(FLOOR)
    assert floor.note is None
    [run] = floor.runs
    assert run.ops > 0
    assert floor.ops_per_s is not None
    assert floor.ops_per_s > 0
    assert floor.p50 is not None
    assert floor.p99 is not None


async def test_single_and_cluster_are_measured_side_by_side(redis_url: str, tmp_path: Path) -> None:
    floor_tool = shutil.which("redis-benchmark")
    options = tiny(redis_url, topologies=("single", "cluster"), redis_benchmark=floor_tool)
    report = await run_cache_bench(options)

    assert report.topologies == ["single", "cluster"]
    for topology in report.topologies:
        for target in TARGETS:
            summary = report.summary(target.name, topology)
            [run] = summary.runs
            assert run.ops > 0, f"{target.name} on {topology}: {run.first_error}"
            assert summary.errors == 0, f"{target.name} on {topology}: {run.first_error}"
        floor = report.summary(FLOOR, topology)
        if floor_tool is not None:  # on the cluster: --cluster, reading values, not nil replies
            assert floor.note is None, f"{topology}: {floor.note}"
            [run] = floor.runs
            assert run.ops > 0
    groups = topology_rows(report.summaries)
    assert [[row[1] for row in group] for group in groups] == [["single", "cluster"]] * 5
    assert all(len(row) == len(TOPOLOGY_COLUMNS) for group in groups for row in group)
    console = Console(record=True, width=120)
    render_report(report, console)
    shown = console.export_text()
    assert "ops/s vs" in shown
    assert "cluster: tuned vs reference: " in shown

    document = report.to_json()
    assert [topology["name"] for topology in document["topologies"]] == ["single", "cluster"]
    assert {(profile["name"], profile["topology"]) for profile in document["profiles"]} == {
        (name, topology)
        for name in [*(target.name for target in TARGETS), FLOOR]
        for topology in ("single", "cluster")
    }
    assert {entry["profile"] for entry in document["versus"]} >= {"reference", "tuned"}
    assert all(entry["topology"] == "cluster" for entry in document["versus"])
    cluster = Topology.from_url(report.setups[1].read_url)
    assert not any(answers_ping(node.host, node.port) for node in cluster.endpoints)
    client = redis.Redis.from_url(redis_url)
    try:
        assert [key async for key in client.scan_iter(match=f"{report.key_prefix}*")] == []
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0,redis://localhost:6380/0",
        "redis+sentinel://127.0.0.1:26379,[::1]:26380/postal?role=replica",
        "redis+cluster://user:secret@127.0.0.1:7000,127.0.0.2:7001",
    ],
)
def test_topology_urls_on_loopback_are_accepted(url: str) -> None:
    require_loopback_redis(url)


async def test_a_list_of_replicas_needs_a_write_url() -> None:
    url = "redis://127.0.0.1:6380/0,redis://127.0.0.1:6381/0"
    with pytest.raises(BenchError, match="--write-url"):
        await run_cache_bench(CacheBenchOptions(url=url))


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.1.2.3:6379/0",
        "redis://localhost:6379",
        "redis://LOCALHOST",
        "redis://[::1]:6379/0",
        "rediss://:secret@127.0.0.1:6380/1",
    ],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    require_loopback(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.0.0.5:6379/0",
        "redis://redis.example.com:6379",
        "redis://0.0.0.0:6379",
        "redis://localhost.example.com",
        "redis://[2001:db8::1]:6379",
        "unix:///tmp/redis.sock",
        "http://127.0.0.1:6379",
        "redis://",
        # every host of a list is checked, not the first only
        "redis://127.0.0.1:6379/0,redis://10.0.0.5:6379/0",
        "redis+sentinel://127.0.0.1:26379,10.0.0.5:26379/postal",
        "redis+cluster://127.0.0.1:7000,redis.example.com:7001",
    ],
)
async def test_non_loopback_urls_are_refused_before_any_load(url: str) -> None:
    with pytest.raises(NotLoopback, match="refusing to send load"):
        await run_cache_bench(CacheBenchOptions(url=url))


def test_the_command_refuses_a_remote_url_with_exit_code_2() -> None:
    url = "redis://user:hunter2@10.1.2.3:6379/0"
    result = CliRunner().invoke(app, ["bench", "cache", "--url", url, "--quick"])
    assert result.exit_code == 2
    assert "refusing to send load" in result.output
    assert "hunter2" not in result.output


def test_the_command_refuses_a_bad_duration_with_exit_code_2() -> None:
    result = CliRunner().invoke(app, ["bench", "cache", "--duration", "3"])
    assert result.exit_code == 2


def test_the_command_refuses_an_unknown_topology_with_exit_code_2() -> None:
    result = CliRunner().invoke(app, ["bench", "cache", "--topologies", "single,sentinel"])
    assert result.exit_code == 2
    assert "topologies are single, cluster" in result.output
