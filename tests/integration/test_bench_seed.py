"""`postal bench seed` end to end at a tiny size: the real Postal twice (before, tuned), the
latency proxy in its child process, the scripted DNS, the test PostgreSQL and Redis.

Asserted: what the bench computed and what it left behind, never how fast anything was.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from typer.testing import CliRunner

from postal.cli import app
from postal_bench import cpu_time
from postal_bench.imports.database import BenchDatabase
from postal_bench.seed.bench import run_seed_bench
from postal_bench.seed.options import SeedBenchOptions
from postal_testing.proxy_child import ProxyProcess
from tests.support.database import HOST, PORT, USER

REQUESTS = 300
POSTS = 300
HIT_RATE = 0.9
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def keys_under(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        await client.aclose()


def both_loads(run: dict[str, Any], *path: str) -> int:
    """The sum of one figure over the run's two loads (items, listing)."""
    total = 0
    for phase in (run["items"], run["listing"]):
        value: Any = phase
        for name in path:
            value = value[name]
        total += int(value)
    return total


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, Any]:
    """One tiny bench through the CLI (the database: the default, a scratch one)."""
    directory = tmp_path_factory.mktemp("seed")
    arguments = [
        "bench", "seed", "--requests", str(REQUESTS), "--posts", str(POSTS), "--runs", "1",
        "--connections", "20", "--latency", "500us", "--dns-delay", "5ms",
        "--hit-rate", str(HIT_RATE), "--redis-url", redis_url,
        "--json", str(directory / "seed.json"), "--plot", str(directory / "seed.png"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return {
        "output": result.output,
        "document": json.loads((directory / "seed.json").read_text()),
        "png": (directory / "seed.png").read_bytes(),
    }


def test_both_profiles_ran_every_request_without_an_error(tiny_run: dict[str, Any]) -> None:
    profiles = tiny_run["document"]["profiles"]

    assert set(profiles) == {"before", "tuned"}
    for runs in profiles.values():
        (run,) = runs
        for phase in (run["items"], run["listing"]):
            assert phase["requests"] == phase["completed"] == REQUESTS
            assert phase["errors"] == 0
        assert run["warmed"] == POSTS // 10  # every hot post's entry was filled first


def test_every_process_s_cpu_is_measured(tiny_run: dict[str, Any]) -> None:
    # The server's included: it is the process the CPU line is mostly about.
    for runs in tiny_run["document"]["profiles"].values():
        cpu = runs[0]["items"]["cpu_s"]
        assert cpu["server"] is not None
        assert cpu["server"] > 0
        assert cpu["proxy"] is not None
        assert cpu["machine"] >= cpu["server"]


def test_the_hit_rate_is_the_one_asked_for(tiny_run: dict[str, Any]) -> None:
    profiles = tiny_run["document"]["profiles"]
    misses = round(REQUESTS * (1 - HIT_RATE))

    before = profiles["before"][0]["items"]["cache"]
    tuned = profiles["tuned"][0]["items"]["cache"]
    # The before profile has no deadline: every GET is answered, hit or miss as designed.
    assert (before["hits"], before["misses"]) == (REQUESTS - misses, misses)
    assert before["hit_rate"] == pytest.approx(HIT_RATE)
    # The tuned one may time a GET out on a busy machine (a fallback, not a hit nor a miss).
    assert 0 < tuned["misses"] <= misses
    assert tuned["answered_hit_rate"] == pytest.approx(HIT_RATE, abs=0.05)


def test_the_tuned_hot_set_is_answered_from_the_near_cache(tiny_run: dict[str, Any]) -> None:
    # Warmed into memory before the load, and kept there while the misses' fills (writes
    # under the prefix, each pushed to the tracking connection) go on: each hot read is a
    # near-cache hit, unless tracking flapped on a loaded machine (a flush).
    hot_reads = REQUESTS - round(REQUESTS * (1 - HIT_RATE))
    tuned = tiny_run["document"]["profiles"]["tuned"][0]["items"]["cache"]
    before = tiny_run["document"]["profiles"]["before"][0]["items"]["cache"]
    assert tuned["near_hits"] >= 0.9 * hot_reads
    assert before["near_hits"] == 0  # the incident's profile has no near cache


def test_before_dials_and_resolves_per_operation_tuned_reuses(tiny_run: dict[str, Any]) -> None:
    profiles = tiny_run["document"]["profiles"]
    before, tuned = profiles["before"][0], profiles["tuned"][0]

    opened = both_loads(before, "cache", "connections_opened")
    assert opened > both_loads(tuned, "cache", "connections_opened")
    # Every operation dialled (hits, misses' fills, the listing): more dials than requests.
    assert opened >= 2 * REQUESTS
    # Each dial resolved the name, by a lookup of its own or by joining one in flight (the
    # cache coalesces concurrent lookups even with its TTL at 0, as Go's resolver does).
    resolved = both_loads(before, "cache", "dns_lookups")
    joined = both_loads(before, "cache", "dns_cached")
    assert resolved >= 1
    # Dials in flight at either scrape (a background fill of the load before, still dialling
    # when the next load's first scrape is taken) count on one side of it only: a few apart.
    assert abs(resolved + joined - opened) <= 20
    # The proxy saw the same connections the pools said they opened.
    assert abs(both_loads(before, "proxy_accepted") - opened) <= 20
    # Tuned resolves once per TTL (30 s): nothing, or a re-resolve after a failed connection.
    assert both_loads(tuned, "cache", "dns_lookups") <= 2


def test_the_report_prints_the_table_and_the_plot_is_a_png(tiny_run: dict[str, Any]) -> None:
    output, document = tiny_run["output"], tiny_run["document"]

    assert "postal bench seed: 300 posts in PostgreSQL, 300 requests x 20 connections" in output
    assert "cache GET p99, service (ms)" in output
    assert "reads: near cache / Redis GETs" in output
    assert "target: tuned cache GET p99 (service) <= 10 ms" in output
    assert document["benchmark"] == "seed"
    assert document["settings"]["latency"] == 0.0005
    assert set(document["target"]) >= {"p99_upper", "throughput_ratio", "met"}
    assert tiny_run["png"].startswith(PNG_SIGNATURE)


async def test_nothing_is_left_behind(tiny_run: dict[str, Any], redis_url: str) -> None:
    settings = tiny_run["document"]["settings"]

    assert settings["scratch_database"]
    name = settings["database"].rpartition("/")[2]
    assert name.startswith("postal_bench_")
    connection = await asyncpg.connect(host=HOST, port=PORT, user=USER, database="postgres")
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", name
        )
    finally:
        await connection.close()
    assert found == 0
    for prefix in settings["key_prefixes"]:
        assert await keys_under(redis_url, prefix) == []


async def test_a_given_database_is_used_and_left_empty(
    clean_database: str, redis_url: str, tmp_path: Path
) -> None:
    options = SeedBenchOptions(
        requests=50, posts=50, runs=1, connections=5, latency=0.0, dns_delay=0.0,
        redis_url=redis_url, database_url=clean_database,
    )  # fmt: skip

    report = await run_seed_bench(options)

    assert not report.scratch_database
    assert [run.profile for run in report.runs] == ["before", "tuned"]
    assert all(run.items.completed == 50 for run in report.runs)
    assert await BenchDatabase(clean_database, scratch=False).counts() == (0, 0)


async def test_the_proxy_child_forwards_counts_and_stops(redis_url: str) -> None:
    proxy = ProxyProcess("127.0.0.1", 6379, 0.0)
    await proxy.start()
    try:
        client = redis.Redis(host="127.0.0.1", port=proxy.port)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        stats = await proxy.stats()
        assert stats.accepted == 1
    finally:
        await proxy.stop()
    assert proxy.pid is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--latency", "5"], "--latency: expected a duration"),
        (["--dns-delay", "soon"], "--dns-delay: expected a duration"),
        (["--redis-url", "redis://192.0.2.1:6379/0"], "refusing"),
        (["--database-url", "postgresql+asyncpg://postgres@192.0.2.1/x"], "refusing"),
        (["--hit-rate", "1.5"], "--hit-rate must be between 0 and 1"),
        (["--posts", "100"], "--posts 100 is too few"),
    ],
)
def test_bad_options_exit_2_with_a_message(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "seed", *arguments])

    assert result.exit_code == 2
    assert message in result.output


def test_plot_without_matplotlib_exits_2_saying_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails

    result = CliRunner().invoke(app, ["bench", "seed", "--plot", str(tmp_path / "x.png")])

    assert result.exit_code == 2
    assert "--plot needs matplotlib: pip install 'postal[bench]'" in result.output


def test_cpu_time_reads_processes_from_proc() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    child.wait()
    sum(range(200_000))  # some CPU of our own
    own = cpu_time.process_cpu(os.getpid())
    assert own is not None
    assert own > 0
    assert cpu_time.process_cpu(child.pid) is None  # gone
    machine = cpu_time.machine_cpu()
    assert machine is not None
    assert machine >= own
    assert cpu_time.processes_named("no such command") == 0.0
    assert cpu_time.tree_cpu(child.pid) is None  # gone


def test_tree_cpu_adds_the_living_descendants() -> None:
    busy = "import time; sum(range(3_000_000)); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.DEVNULL)
    try:
        for _ in range(250):  # until the child has used a tick of CPU (Python's start-up does)
            used = cpu_time.process_cpu(child.pid)
            if used:
                break
            time.sleep(0.02)
        assert used
        own = cpu_time.process_cpu(os.getpid())
        tree = cpu_time.tree_cpu(os.getpid())
        assert own is not None
        assert tree is not None
        assert tree >= own + used  # the child counted (both read again: each only grows)
    finally:
        child.kill()
        child.wait()
