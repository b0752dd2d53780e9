"""`postal bench http` and its load generator against real servers on loopback, briefly.

The floor server is a real uvicorn process (started once for the module); the open loop's
no-coordinated-omission rule is checked against a deliberately slow stub server in-process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from typer.testing import CliRunner

from postal.cache import Topology
from postal.cli import app
from postal_bench.errors import BenchError, NotLoopback
from postal_bench.http.apps import BODY_BYTES, constant_body
from postal_bench.http.bench import run_http_bench
from postal_bench.http.options import HttpBenchOptions
from postal_bench.http.servers import ServerProcess, free_port, postal_server_command
from postal_bench.http.stats import (
    COLUMNS,
    FLOOR,
    ORDER,
    PEER,
    POSTAL,
    POSTAL_NEAR_OFF,
    TOPOLOGY_COLUMNS,
    HttpRun,
    parse_wrk,
    runs_line,
    summarize,
    table_rows,
    topology_rows,
)
from postal_bench.http.targets import FloorCheck
from postal_bench.loadgen import HttpTarget, closed_loop, fetch, open_loop
from postal_bench.output import write_json
from postal_bench.stats import RunResult
from postal_testing.redis_servers import answers_ping

POST_PATH = "/api/v1/posts/1"
RUN_FIELDS = {"closed", "open", "server_cpu_s", "server_log_lines", "first_server_log_line"}
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8000/api/v1/posts/1
  1 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.90ms    1.03ms  20.00ms   90.00%
    Req/Sec    25.44k     3.64k   27.76k    90.00%
  Latency Distribution
     50%  750.00us
     75%    3.88ms
     90%    4.23ms
     99%    1.20s
  25000 requests in 1.00s, 31.64MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 10
Requests/sec:  25000.00
Transfer/sec:     31.64MB
"""


@pytest.fixture(scope="module")
def floor_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A floor server (Postal's server, one worker) answering 100-byte bodies, for the module."""
    port = free_port()
    command = postal_server_command("postal_bench.http.apps:floor_app", port, workers=1)
    log_dir = tmp_path_factory.mktemp("floor")
    server = ServerProcess("floor", command, port, {BODY_BYTES: "100"}, log_dir)
    server.start()
    try:
        asyncio.run(server.wait_ready(POST_PATH))
        yield server.base_url + POST_PATH
    finally:
        server.stop()


def tiny(redis_url: str, **changes: Any) -> HttpBenchOptions:
    """Floor and peer, 0.1 s of warm-up and 0.3 s per loop, 10 connections, 200 req/s."""
    options = HttpBenchOptions(
        redis_url=redis_url,
        targets=(FLOOR, PEER),
        connections=10,
        rate=200,
        duration=0.3,
        warmup=0.1,
        runs=1,
        value_size=300,
    )
    return replace(options, **changes)


def port_is_closed(url: str) -> bool:
    target = HttpTarget.from_url(url)
    try:
        socket.create_connection((target.host, target.port), timeout=1).close()
    except OSError:
        return True
    return False


async def test_fetch_reads_a_floor_reply(floor_url: str) -> None:
    reply = await fetch(floor_url)
    assert reply.status == 200
    assert reply.body == constant_body(100)
    assert reply.header("Content-Type") == "application/json"


async def test_the_closed_loop_completes_requests_with_sane_latencies(floor_url: str) -> None:
    result = await closed_loop(
        HttpTarget.from_url(floor_url), connections=10, seconds=0.3, warmup=0.1
    )
    assert result.errors == 0, result.first_error
    assert result.completed > 100
    assert 0.25 < result.elapsed < 1.0
    latencies = sorted(result.latencies)
    assert 0 < latencies[len(latencies) // 2] <= latencies[-1] < 1.0


async def test_the_open_loop_sends_about_rate_times_duration(floor_url: str) -> None:
    result = await open_loop(HttpTarget.from_url(floor_url), rate=500, seconds=0.4, warmup=0.1)
    assert result.sent == 200  # 500/s x 0.4 s, the warm-up's 50 not counted
    assert result.errors == 0, result.first_error
    assert result.completed == 200
    assert 0 < min(result.latencies) <= max(result.latencies) < 1.0
    assert 1 <= result.connections <= 256


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """An HTTP/1.1 stub that takes 20 ms per reply, one connection at a time."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.close()
        await server.wait_closed()


async def test_open_loop_latency_counts_from_the_scheduled_time(slow_server: str) -> None:
    # 200 req/s on one connection to a server doing 50/s: requests queue, and each one's wait in
    # the queue is latency. Timed from its send, every request would take ~20 ms.
    result = await open_loop(
        HttpTarget.from_url(slow_server), rate=200, seconds=0.2, max_connections=1
    )
    assert result.errors == 0, result.first_error
    assert result.connections == 1
    assert result.completed == 40
    assert min(result.latencies) >= 0.015
    assert max(result.latencies) > 0.4  # the last: scheduled at 0.2 s, answered at ~0.8 s


async def test_the_bench_on_floor_and_peer_reports_ratios_and_cleans_up(
    redis_url: str, tmp_path: Path
) -> None:
    seen: list[str] = []
    report = await run_http_bench(
        tiny(redis_url), lambda label, elapsed, planned: seen.append(label)
    )

    assert [summary.name for summary in report.summaries] == [FLOOR, PEER]
    for summary in report.summaries:
        [run] = summary.runs
        assert summary.errors == 0, run.closed.first_error or run.open.first_error
        assert summary.rps is not None
        assert summary.rps > 0
        assert summary.p50 is not None
        assert summary.p99 is not None
        assert 0 < summary.p50 <= summary.p99 < 1.0
        assert run.open.details["sent"] == 60  # 200 req/s x 0.3 s
        assert summary.note is None  # at warning level, they log nothing
        assert run.server_cpu is not None  # read from /proc, the server's process tree
        assert run.server_cpu > 0
        assert summary.cpu_per_request == run.server_cpu / run.closed.ops
    floor, peer = report.summaries
    assert floor.rps_vs_floor == 1.0
    assert peer.rps_vs_peer == 1.0
    assert peer.rps_vs_floor is not None
    assert floor.rps_vs_peer is not None
    assert peer.p99_vs_floor is not None
    assert report.body_bytes == 300
    assert report.check.line() == "targets: not checked (postal was not measured)"
    assert [check.met for check in report.floor_checks] == [False, False]
    assert all("req/s - of the floor's" in check.line() for check in report.floor_checks)
    assert all("not measured" in check.line() for check in report.floor_checks)
    assert all(len(row) == len(COLUMNS) for row in table_rows(report.summaries))
    assert any("peer · run 1/1" in label for label in seen)

    assert set(report.servers) == {FLOOR, PEER}
    assert all(port_is_closed(url) for url in report.servers.values())
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in report.key_prefixes:
            assert [key async for key in client.scan_iter(match=f"{prefix}*")] == []
    finally:
        await client.aclose()

    path = tmp_path / "bench.json"
    write_json(path, report.to_json())
    document = json.loads(path.read_text())
    assert document["benchmark"] == "http"
    assert document["settings"]["closed_loop_tool"] == "built-in"
    assert [target["name"] for target in document["targets"]] == [FLOOR, PEER]
    assert set(document["targets"][1]["runs"][0]) == RUN_FIELDS
    assert document["targets"][1]["req_per_s_vs_floor"] == peer.rps_vs_floor
    assert document["targets"][1]["server_cpu_us_per_request"] > 0
    assert document["target"]["met"] is False
    assert [check["target"] for check in document["floor_targets"]] == [POSTAL, POSTAL_NEAR_OFF]


async def test_postal_near_cache_on_and_off_is_measured_next_to_the_floor_and_peer(
    redis_url: str,
) -> None:
    report = await run_http_bench(tiny(redis_url, targets=ORDER))

    assert [summary.name for summary in report.summaries] == list(ORDER)
    for name in (POSTAL, POSTAL_NEAR_OFF):
        postal = report.summary(name)
        [run] = postal.runs
        assert postal.errors == 0, run.closed.first_error or run.open.first_error
        assert postal.rps is not None
        assert postal.rps > 0
        assert postal.p99 is not None
        assert postal.rps_vs_peer is not None
        assert postal.rps_vs_floor is not None
        assert postal.p99_vs_floor is not None
        assert postal.cpu_per_request is not None
        assert postal.cpu_per_request > 0
        note = postal.note or ""  # a slow-operation warning may come on a shared machine
        assert "not seen in Redis" not in note
        assert "near cache answered" not in note
    near_hits = report.near_hits[POSTAL]
    assert near_hits is not None
    assert near_hits > 0  # answered from memory...
    assert report.near_hits[POSTAL_NEAR_OFF] == 0  # ...and, turned off, never
    assert report.body_bytes > 300  # the post's JSON: its 300-character body and the rest
    assert report.check.line().startswith("targets: postal req/s vs peer ")
    on, off = report.floor_checks
    assert (on.name, off.name) == (POSTAL, POSTAL_NEAR_OFF)
    assert on.rps_vs_floor == report.summary(POSTAL).rps_vs_floor
    assert off.p99_vs_floor == report.summary(POSTAL_NEAR_OFF).p99_vs_floor
    assert "not measured" not in on.line() + off.line()
    assert all(port_is_closed(url) for url in report.servers.values())
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in report.key_prefixes:
            assert [key async for key in client.scan_iter(match=f"{prefix}*")] == []
    finally:
        await client.aclose()


async def test_the_peer_and_postal_on_one_redis_and_on_a_cluster_side_by_side(
    redis_url: str,
) -> None:
    options = tiny(redis_url, targets=(FLOOR, PEER, POSTAL), topologies=("single", "cluster"))
    report = await run_http_bench(options)

    assert report.topologies == ["single", "cluster"]
    assert [(s.name, s.topology) for s in report.summaries] == [
        (FLOOR, ""),
        (PEER, "single"),
        (POSTAL, "single"),
        (PEER, "cluster"),
        (POSTAL, "cluster"),
    ]
    for summary in report.summaries:
        [run] = summary.runs
        where = f"{summary.name} on {summary.topology}"
        assert summary.errors == 0, f"{where}: {run.closed.first_error or run.open.first_error}"
        assert summary.rps is not None
        assert summary.rps > 0, where
        assert summary.note is None or "not seen in Redis" not in summary.note, where
    groups = topology_rows(report.summaries)
    assert [[row[1] for row in group] for group in groups] == [
        ["-"],
        ["single", "cluster"],
        ["single", "cluster"],
    ]
    assert all(len(row) == len(TOPOLOGY_COLUMNS) for group in groups for row in group)
    document = report.to_json()
    assert [target["topology"] for target in document["targets"]] == [
        None,
        "single",
        "single",
        "cluster",
        "cluster",
    ]
    assert [(entry["target"], entry["topology"]) for entry in document["versus"]] == [
        (PEER, "cluster"),
        (POSTAL, "cluster"),
    ]
    assert [check["topology"] for check in document["checks"]] == ["single", "cluster"]
    assert all(port_is_closed(url) for url in report.servers.values())
    assert len(report.servers) == 5
    cluster = Topology.from_url(report.setups[1].read_url)
    assert not any(answers_ping(node.host, node.port) for node in cluster.endpoints)
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in report.key_prefixes:
            assert [key async for key in client.scan_iter(match=f"{prefix}*")] == []
    finally:
        await client.aclose()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
async def test_wrk_runs_the_closed_loop_when_installed(redis_url: str) -> None:
    options = tiny(redis_url, targets=(FLOOR,), duration=1.0, wrk=shutil.which("wrk"))
    report = await run_http_bench(options)
    [run] = report.summary(FLOOR).runs
    assert report.closed_loop_tool == "wrk"
    assert run.closed.details["tool"] == "wrk"
    assert run.closed.ops > 0
    assert run.closed.p50 is not None


def test_wrk_output_is_parsed() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert run.ops == 24_990  # non-2xx replies are in the total; socket errors are not
    assert run.errors == 15
    assert run.elapsed == 1.0
    assert run.p50 == pytest.approx(0.00075)
    assert run.p99 == pytest.approx(1.2)
    assert run.first_error == "10 non-2xx/3xx replies"
    with pytest.raises(ValueError, match="requests in"):
        parse_wrk("wrk: connection refused")


@pytest.mark.parametrize(
    ("name", "rps_vs_floor", "p99_vs_floor", "met"),
    [
        (POSTAL, 0.8, 1.5, True),
        (POSTAL, 0.79, 1.0, False),
        (POSTAL, 1.2, 1.51, False),
        (POSTAL_NEAR_OFF, 0.5, 3.0, True),
        (POSTAL_NEAR_OFF, 0.49, 1.0, False),
        (POSTAL_NEAR_OFF, 0.9, 3.1, False),
        (POSTAL_NEAR_OFF, None, 1.0, False),
    ],
)
def test_the_floor_targets_are_issue_16s(
    name: str, rps_vs_floor: float | None, p99_vs_floor: float, met: bool
) -> None:
    """Near cache on: >= 0.8x the floor's req/s, p99 <= 1.5x; off: >= 0.5x, <= 3x."""
    check = FloorCheck(name, rps_vs_floor, p99_vs_floor)
    assert check.met is met
    assert check.line().count("NOT met") + check.line().count("not measured") == (not met)


@pytest.mark.parametrize(
    ("open_p99", "closed_p99", "met"),
    [(1.0, 1.5, True), (1.0, 1.51, False), (1.51, 1.0, False), (None, 1.2, True)],
)
def test_the_p99_bound_holds_in_both_loops(
    open_p99: float | None, closed_p99: float, met: bool
) -> None:
    """The closed loop (100 connections, where the issue measured its tails) counts too."""
    check = FloorCheck(POSTAL, 0.9, open_p99, closed_p99)
    assert check.p99_met is met
    assert f"{closed_p99:.2f}x in the closed loop" in check.line()
    assert check.to_json()["closed_p99_vs_floor"] == closed_p99


def test_the_closed_loop_p99_ratio_is_the_median_of_per_run_ratios() -> None:
    def run(closed_p99: float) -> HttpRun:
        closed = RunResult(1000, 0, 1.0, 0.001, closed_p99, None)
        return HttpRun(closed, RunResult(100, 0, 0.1, 0.001, 0.002, None))

    floor = [run(0.004), run(0.004), run(0.005)]
    postal = [run(0.006), run(0.008), run(0.005)]  # 1.5x, 2x, 1x
    by_name = {FLOOR: floor, POSTAL: postal}
    [summary] = [s for s in summarize(by_name) if s.name == POSTAL]
    assert summary.closed_p99_vs_floor == pytest.approx(1.5)


def test_each_run_is_shown_when_there_are_several() -> None:
    def run(rps: float, p99: float) -> HttpRun:
        closed = RunResult(int(rps), 0, 1.0, None, None, None)
        return HttpRun(closed, RunResult(100, 0, 0.1, 0.001, p99, None))

    runs = [run(3000, 0.002), run(1500, 0.0018), run(1000, 1.6)]
    summaries = summarize({PEER: runs})
    [peer] = summaries
    assert peer.p99 == 0.002  # the median hides the third run...
    assert runs_line(peer) == "runs: req/s 3,000 / 1,500 / 1,000; p99 ms 2.00 / 1.80 / 1600.00"
    assert runs_line(summarize({PEER: runs[:1]})[0]) is None


async def test_a_server_that_does_not_start_is_a_bench_error_with_its_output(
    tmp_path: Path,
) -> None:
    crash = "import sys; print('no posts API here', file=sys.stderr); sys.exit(3)"
    server = ServerProcess("postal", [sys.executable, "-c", crash], free_port(), {}, tmp_path)
    server.start()
    try:
        with pytest.raises(BenchError, match="Postal did not start: exited with code 3") as info:
            await server.wait_ready("/healthz", timeout=10)
    finally:
        server.stop()
    assert "no posts API here" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000/",
        "http://example.com/",
        "http://0.0.0.0:8000/",
        "https://127.0.0.1:8000/",
        "http://[2001:db8::1]/",
    ],
)
async def test_the_load_generator_refuses_non_loopback_urls(url: str) -> None:
    with pytest.raises(NotLoopback, match="refusing to send load"):
        await closed_loop(HttpTarget.from_url(url), connections=1, seconds=0.1)


@pytest.mark.parametrize(
    "changes",
    [
        {"redis_url": "redis://10.1.2.3:6379/0"},
        {"database_url": "postgresql+asyncpg://postal:secret@db.example.com/postal"},
    ],
)
async def test_the_bench_refuses_non_loopback_servers(changes: dict[str, str]) -> None:
    with pytest.raises(NotLoopback, match="refusing to send load"):
        await run_http_bench(replace(HttpBenchOptions(), **changes))


def test_the_command_refuses_a_remote_redis_with_exit_code_2() -> None:
    url = "redis://user:hunter2@10.1.2.3:6379/0"
    result = CliRunner().invoke(app, ["bench", "http", "--redis-url", url, "--quick"])
    assert result.exit_code == 2
    assert "refusing to send load" in result.output
    assert "hunter2" not in result.output


def test_the_command_refuses_an_unknown_target_with_exit_code_2() -> None:
    result = CliRunner().invoke(app, ["bench", "http", "--targets", "floor,nginx"])
    assert result.exit_code == 2
    assert "nginx" in result.output
