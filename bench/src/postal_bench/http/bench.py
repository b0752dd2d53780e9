"""`postal bench http`: Postal's `GET /api/v1/posts/{id}` on cache hits, next to what the same
HTTP server does with nothing behind it and with what a user would otherwise write.

Targets, each a real server process on a free loopback port, all uvicorn (uvloop, httptools)
with the same worker count, started once and measured interleaved run by run:

- `floor`: a bare Starlette route answering constant bytes of the post's size (`http_apps`), on
  the server `postal serve` runs (Postal's bounded protocol, `servers.postal_server_command`);
- `peer`: a plain Starlette route doing one redis.asyncio GET per request on a
  BlockingConnectionPool(50), as large as Postal's read pool, answering the post's bytes (on
  Sentinel, replicas or a cluster: redis.asyncio as a user would write it for those);
- `postal`: `postal serve`, reading one post whose cache entry is filled beforehand, with the
  near cache on (its default): hits answered from the worker's memory;
- `postal-near-off`: the same with `NEAR_CACHE_ENABLED=false`: every hit one Redis GET.

The Redis is `--redis-url` as given, or, with `--topologies single,cluster`, both the one server
of that URL and a Redis Cluster of three masters the bench starts: a peer and the Postals are
then served against each (one floor: it has no Redis; a cluster's read role has no near cache),
measured interleaved run by run, and the report sets each target's figures on one topology next
to its figures on the other.

Each run of a target is a closed loop (C connections back to back: the req/s, by wrk when
installed, else the built-in generator) then an open loop at a fixed rate (the latencies, from
each request's scheduled time; built-in, as wrk has no open loop). Over the closed loop, warm-up
excluded, the server's CPU (user + system, its process and its workers', from /proc) is read
before and after: divided by the requests answered, the CPU a request costs, steadier than the
req/s when the load generator shares the CPUs. Medians of the runs; ratios per run, then their
median (see `http_stats`); the targets in `http_targets`. Client and server share this
machine's CPUs, which the report says, since the load generator's CPU is taken from the
server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from postal_bench import cpu_time, loadgen
from postal_bench.errors import BenchError
from postal_bench.http import stats as http_stats
from postal_bench.http.apps import BODY_BYTES, KEY_PREFIX, REDIS_URL, constant_body
from postal_bench.http.options import HttpBenchOptions
from postal_bench.http.postal_target import (
    READY_PATH,
    PostalConfig,
    PreparedPost,
    delete_post,
    near_cache_hits,
)
from postal_bench.http.postal_target import prepare_post as prepare_postal_post
from postal_bench.http.report import HttpBenchReport
from postal_bench.http.servers import (
    ServerProcess,
    free_port,
    postal_command,
    postal_server_command,
    uvicorn_command,
)
from postal_bench.http.stats import (
    FLOOR,
    ORDER,
    PEER,
    POSTAL,
    POSTAL_NEAR_OFF,
    POSTALS,
    HttpRun,
    TargetSummary,
)
from postal_bench.load import ProgressFn, no_progress, run_tool
from postal_bench.redis_topologies import (
    RedisSetup,
    delete_prefix,
    redis_setups,
    require_loopback_servers,
    write_keys,
)
from postal_bench.stats import RunResult, summarize_run

TOOL_GRACE = 30.0  # s wrk may overrun its planned time before it is killed
WRK_THREADS = 1  # wrk's C outruns a uvicorn worker on one thread, leaving the other core free
LOG_LINE_SHOWN = 200  # characters of a server's first log line shown in the report
DEFAULT_POST_ID = "1"  # the id the floor and peer serve when Postal is not measured
FACTORIES = {FLOOR: "postal_bench.http.apps:floor_app", PEER: "postal_bench.http.apps:peer_app"}


def _loop_result(result: loadgen.LoadResult, details: dict[str, object]) -> RunResult:
    return summarize_run(
        result.latencies,
        errors=result.errors,
        elapsed=result.elapsed,
        first_error=result.first_error,
        details=details | {"sent": result.sent, "connections": result.connections},
    )


CpuReader = Callable[[], float | None]  # CPU seconds a server has used so far


async def measure_closed(
    target: loadgen.HttpTarget,
    options: HttpBenchOptions,
    label: str,
    progress: ProgressFn,
    server_cpu: CpuReader = lambda: None,
) -> tuple[RunResult, float | None]:
    """The closed loop: a warm-up then the measured load (wrk's, when given); and the CPU
    seconds `server_cpu` says the server used while measured (None if it cannot say)."""
    planned = options.warmup + options.duration
    readings: list[float | None] = []

    def read_cpu() -> None:
        readings.append(server_cpu())

    def used() -> float | None:
        first, last = readings if len(readings) == 2 else (None, None)
        return None if first is None or last is None else last - first

    def tick(offset: float, phase: str | None = None) -> loadgen.Tick:
        def show(elapsed: float) -> None:
            shown = phase or ("warm-up" if elapsed < options.warmup else "closed loop")
            progress(f"{label} · {shown}", offset + elapsed, planned)

        return show

    if options.wrk is None:
        result = await loadgen.closed_loop(
            target,
            connections=options.connections,
            seconds=options.duration,
            warmup=options.warmup,
            tick=tick(0.0),
            on_measure=read_cpu,
        )
        read_cpu()
        return _loop_result(result, {"tool": "built-in"}), used()
    if options.warmup > 0:
        await loadgen.closed_loop(
            target,
            connections=options.connections,
            seconds=options.warmup,
            tick=tick(0.0, "warm-up"),
        )
    seconds = max(1, round(options.duration))  # wrk takes whole seconds
    command = [
        options.wrk, "-t", str(min(WRK_THREADS, options.connections)),
        "-c", str(options.connections), "-d", f"{seconds}s", "--latency", "--timeout", "5s",
        target.url,
    ]  # fmt: skip
    read_cpu()
    output = await run_tool(
        command, seconds + TOOL_GRACE, tick(options.warmup, "closed loop (wrk)")
    )
    read_cpu()
    try:
        return http_stats.parse_wrk(output), used()
    except ValueError as exc:
        raise BenchError(f"cannot read wrk's output ({exc}); try --no-wrk") from None


async def measure_open(
    target: loadgen.HttpTarget, options: HttpBenchOptions, label: str, progress: ProgressFn
) -> RunResult:
    planned = options.warmup + options.duration
    phase = f"open loop {options.rate:,.0f} req/s"
    result = await loadgen.open_loop(
        target,
        rate=options.rate,
        seconds=options.duration,
        warmup=options.warmup,
        tick=lambda elapsed: progress(f"{label} · {phase}", elapsed, planned),
    )
    details: dict[str, object] = {"rate": options.rate, "late_sends": result.late_sends}
    return _loop_result(result, details)


class Bench:
    """One topology's servers and keys (and the floor's, for the first): started in
    `prepare`, always released by `close`."""

    def __init__(
        self,
        options: HttpBenchOptions,
        setup: RedisSetup,
        workdir: Path,
        *,
        with_floor: bool = True,
        label: str = "",
    ) -> None:
        self.options = options
        self.setup = setup
        self.workdir = workdir
        self.label = label  # " · cluster" when several topologies are measured, else ""
        self.names = [
            name for name in ORDER if name in options.targets and (with_floor or name != FLOOR)
        ]
        self.servers: dict[str, ServerProcess] = {}
        self.paths: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.peer_prefix = f"postal-bench-http:{uuid.uuid4().hex[:12]}:"
        self.postals: dict[str, PostalConfig] = {}  # by target: near cache on, off
        self.posts: dict[str, PreparedPost] = {}
        self.near_hits: dict[str, int | None] = {}  # by Postal target, read after the runs
        self.body = constant_body(options.value_size)

    def _server(
        self, name: str, command: list[str], port: int, env: dict[str, str]
    ) -> ServerProcess:
        title = f"{name}{self.label.replace(' · ', ' on ')}"  # "postal on cluster"
        server = ServerProcess(title, command, port, env, self.workdir)
        self.servers[name] = server
        server.start()
        return server

    async def _prepare_postal(self, name: str) -> PreparedPost:
        """Start one Postal (near cache on or off, a directory and a key prefix of its own)
        and cache its post."""
        options, setup = self.options, self.setup
        workdir = self.workdir / name
        workdir.mkdir()
        config = PostalConfig.create(
            setup.read_url,
            options.database_url,
            workdir,
            setup.write_url,
            near_cache=name == POSTAL,
        )
        self.postals[name] = config
        port = free_port()
        server = self._server(name, postal_command(port, options.workers), port, config.environment)
        await server.wait_ready(READY_PATH)
        post = await prepare_postal_post(server, config, setup.write_url, options.value_size)
        self.posts[name] = post
        self.paths[name] = post.path
        if not post.cache_confirmed:
            self.notes[name] = "its cache entry was not seen in Redis before measuring"
        return post

    async def prepare(self) -> None:
        """The Postals first (the first one's post decides the body everyone serves), then
        the floor and the peer."""
        options, setup = self.options, self.setup
        self.workdir.mkdir(parents=True, exist_ok=True)
        post_id = DEFAULT_POST_ID
        for position, name in enumerate(name for name in POSTALS if name in self.names):
            post = await self._prepare_postal(name)
            if position == 0:
                post_id, self.body = post.post_id, post.body
        path = f"/api/v1/posts/{post_id}"
        if PEER in self.names:
            await write_keys(setup.write_url, [self.peer_prefix + post_id], self.body)
        environment = {
            BODY_BYTES: str(len(self.body)),
            REDIS_URL: setup.read_url,
            KEY_PREFIX: self.peer_prefix,
        }
        started = []
        for name in (FLOOR, PEER):
            if name in self.names:
                port = free_port()
                # The floor on Postal's own server, the peer on uvicorn as a user runs it.
                serve = postal_server_command if name == FLOOR else uvicorn_command
                command = serve(FACTORIES[name], port, options.workers)
                started.append(self._server(name, command, port, environment))
                self.paths[name] = path
        await asyncio.gather(*(server.wait_ready(path) for server in started))

    @property
    def key_prefixes(self) -> list[str]:
        return [self.peer_prefix, *(config.key_prefix for config in self.postals.values())]

    async def check_near_caches(self) -> None:
        """Note a Postal whose near cache did not do what its target says: none answered from
        memory with it on (tracking never live), or some with it off."""
        for name in self.postals:
            hits = await near_cache_hits(self.servers[name])
            self.near_hits[name] = hits
            if hits is None:
                self._note(name, "its near cache's reads could not be read from its /metrics")
            elif name == POSTAL and not hits:
                self._note(name, "its near cache answered no read (tracking never live?)")
            elif name == POSTAL_NEAR_OFF and hits:
                self._note(name, f"its near cache answered {hits:,} reads, though off")

    def _note(self, name: str, note: str) -> None:
        self.notes[name] = f"{self.notes[name]}; {note}" if name in self.notes else note

    async def close(self) -> None:
        try:
            for name, config in self.postals.items():
                server, post = self.servers.get(name), self.posts.get(name)
                if server and post and server.returncode() is None:
                    await delete_post(server, config, post.post_id)
        finally:
            for server in reversed(self.servers.values()):
                server.stop()
            for prefix in self.key_prefixes:
                await delete_prefix(self.setup.write_url, prefix)

    def target(self, name: str) -> loadgen.HttpTarget:
        server = self.servers[name]
        code = server.returncode()
        if code is not None:
            raise server.failure(f"exited during the bench with code {code}")
        return loadgen.HttpTarget.from_url(server.base_url + self.paths[name])


async def measure_target(
    state: Bench, name: str, options: HttpBenchOptions, label: str, progress: ProgressFn
) -> HttpRun:
    """One run of a target: its closed loop, its open loop, and what its server logged."""
    server = state.servers[name]
    position = server.log_position()
    closed, cpu = await measure_closed(
        state.target(name), options, label, progress, lambda: cpu_time.tree_cpu(server.pid)
    )
    opened = await measure_open(state.target(name), options, label, progress)
    logged = [line for line in server.log_since(position) if line.strip()]
    first = logged[0][:LOG_LINE_SHOWN] if logged else None
    return HttpRun(closed, opened, len(logged), first, cpu)


async def run_http_bench(
    options: HttpBenchOptions, progress: ProgressFn = no_progress
) -> HttpBenchReport:
    """Set the topologies up, start the targets, measure each `runs` times interleaved (topology
    by topology), stop them and what was set up, summarize."""
    options.check()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with (
        tempfile.TemporaryDirectory(prefix="postal-bench-http-") as workdir,
        redis_setups(options.topologies, options.redis_url, options.write_url) as setups,
    ):
        for setup in setups:  # before anything is written: a Sentinel may name a remote primary
            await require_loopback_servers(setup.read_url)
            await require_loopback_servers(setup.write_url)
        several = len(setups) > 1
        benches = [
            Bench(
                options,
                setup,
                Path(workdir) / setup.name,
                with_floor=position == 0,
                label=f" · {setup.name}" if several else "",
            )
            for position, setup in enumerate(setups)
        ]
        results: dict[tuple[str, str], list[HttpRun]] = {}
        async with contextlib.AsyncExitStack() as stack:
            for state in benches:
                stack.push_async_callback(state.close)
            progress("starting servers", 0.0, 1.0)
            for state in benches:
                await state.prepare()
            for run in range(1, options.runs + 1):
                for state in benches:
                    for name in state.names:
                        label = f"{name}{state.label} · run {run}/{options.runs}"
                        measured = await measure_target(state, name, options, label, progress)
                        results.setdefault((state.setup.name, name), []).append(measured)
            for state in benches:
                await state.check_near_caches()
        servers = {
            f"{name}{state.label}": server.base_url
            for state in benches
            for name, server in state.servers.items()
        }
    return HttpBenchReport(
        options=options,
        summaries=_summaries(benches, results),
        started_at=started_at,
        closed_loop_tool="wrk" if options.wrk else "built-in",
        body_bytes=len(benches[0].body),
        servers=servers,
        cpus=os.cpu_count(),
        key_prefixes=[prefix for state in benches for prefix in state.key_prefixes],
        setups=list(setups),
        near_hits={
            f"{name}{state.label}": hits
            for state in benches
            for name, hits in state.near_hits.items()
        },
    )


def _summaries(
    benches: list[Bench], results: dict[tuple[str, str], list[HttpRun]]
) -> list[TargetSummary]:
    """The floor once, then each topology's peer and Postal, their ratios to the floor and to
    the peer taken within the topology."""
    first = benches[0].setup.name
    floor = {FLOOR: results[first, FLOOR]} if (first, FLOOR) in results else {}
    summaries = []
    for state in benches:
        topology = state.setup.name
        by_name = floor | {name: results[topology, name] for name in state.names if name != FLOOR}
        for summary in http_stats.summarize(by_name, state.notes, topology):
            if summary.name != FLOOR or state is benches[0]:
                summaries.append(summary)
    return summaries
