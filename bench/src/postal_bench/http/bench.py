"""`postal bench http`: Postal's `GET /api/v1/posts/{id}` on cache hits, next to what the same
HTTP server does with nothing behind it and with what a user would otherwise write.

Targets, each a real server process on a free loopback port, all uvicorn (uvloop, httptools)
with the same worker count, started once and measured interleaved run by run:

- `floor`: a bare Starlette route answering constant bytes of the post's size (`http_apps`);
- `peer`: a plain Starlette route doing one redis.asyncio GET per request on a
  BlockingConnectionPool(50), as large as Postal's read pool, answering the post's bytes (on
  Sentinel, replicas or a cluster: redis.asyncio as a user would write it for those);
- `postal`: `postal serve`, reading one post whose cache entry is filled beforehand.

The Redis is `--redis-url` as given, or, with `--topologies single,cluster`, both the one server
of that URL and a Redis Cluster of three masters the bench starts: a peer and a Postal are then
served against each (one floor: it has no Redis), measured interleaved run by run, and the report
sets each target's figures on one topology next to its figures on the other.

Each run of a target is a closed loop (C connections back to back: the req/s, by wrk when
installed, else the built-in generator) then an open loop at a fixed rate (the latencies, from
each request's scheduled time; built-in, as wrk has no open loop). Medians of the runs; ratios
per run, then their median (see `http_stats`). Client and server share this machine's CPUs,
which the report says, since the load generator's CPU is taken from the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from postal.cache import Topology, format_duration, mask_url
from postal_bench import loadgen
from postal_bench.errors import BenchError
from postal_bench.http import stats as http_stats
from postal_bench.http.apps import (
    BODY_BYTES,
    KEY_PREFIX,
    PEER_POOL_SIZE,
    REDIS_URL,
    constant_body,
)
from postal_bench.http.postal_target import READY_PATH, PostalConfig, PreparedPost, delete_post
from postal_bench.http.postal_target import prepare_post as prepare_postal_post
from postal_bench.http.servers import ServerProcess, free_port, postal_command, uvicorn_command
from postal_bench.http.stats import FLOOR, ORDER, PEER, POSTAL, HttpRun, TargetSummary
from postal_bench.load import ProgressFn, no_progress, run_tool
from postal_bench.loopback import require_loopback
from postal_bench.output import print_grouped_table
from postal_bench.redis_topologies import (
    SINGLE,
    RedisSetup,
    check_setups,
    delete_prefix,
    masked,
    plain_description,
    redis_setups,
    require_loopback_servers,
    topology_name,
    write_keys,
)
from postal_bench.stats import RunResult, summarize_run

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
WARMUP = 0.5  # s of unmeasured load before each loop
TOOL_GRACE = 30.0  # s wrk may overrun its planned time before it is killed
WRK_THREADS = 1  # wrk's C outruns a uvicorn worker on one thread, leaving the other core free
MAX_CONNECTIONS = 1_000  # bounds on what a run may ask for: a benchmark, not a load test
MAX_RATE = 100_000.0  # req/s
MAX_DURATION = 600.0  # s per loop
LOG_LINE_SHOWN = 200  # characters of a server's first log line shown in the report
DEFAULT_POST_ID = "1"  # the id the floor and peer serve when Postal is not measured

DESCRIPTIONS = {
    FLOOR: "bare Starlette route answering constant bytes (the floor)",
    PEER: "Starlette + one redis.asyncio GET, BlockingConnectionPool(50) (the peer)",
    POSTAL: "postal serve, GET /api/v1/posts/{id}, cache hits",
}
FACTORIES = {FLOOR: "postal_bench.http.apps:floor_app", PEER: "postal_bench.http.apps:peer_app"}


@dataclass(frozen=True, slots=True)
class HttpBenchOptions:
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str | None = None  # None: SQLite in a temporary directory
    targets: tuple[str, ...] = ORDER
    workers: int = 1  # uvicorn worker processes per server
    connections: int = 100  # closed loop
    rate: float = 1000.0  # open loop, requests per second
    duration: float = 3.0  # seconds per measured loop
    runs: int = 3  # medians are taken over these
    warmup: float = WARMUP
    value_size: int = 1024  # characters in the post's body (floor and peer: the served size)
    wrk: str | None = None  # path to wrk; None: the built-in closed loop
    write_url: str | None = None  # Postal's WRITE_REDIS_URL; None: `redis_url` (replicas need it)
    topologies: tuple[str, ...] = ()  # e.g. ("single", "cluster"); (): `redis_url` as given

    def check(self) -> None:
        check_setups(self.topologies, self.redis_url, self.write_url)
        if self.database_url is not None:
            check_database_url(self.database_url)
        unknown = sorted(set(self.targets) - set(ORDER))
        if unknown or not self.targets:
            raise BenchError(f"targets are {', '.join(ORDER)}; got {unknown or 'none'}")
        for name in ("workers", "connections", "runs", "value_size"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1")
        if not (0 < self.rate <= MAX_RATE and 0 < self.duration <= MAX_DURATION):
            raise BenchError(
                f"rate must be in (0, {MAX_RATE:,.0f}] req/s"
                f" and duration in (0, {MAX_DURATION:g}] s"
            )
        if self.connections > MAX_CONNECTIONS or self.warmup < 0:
            raise BenchError(f"at most {MAX_CONNECTIONS} connections; warm-up >= 0")


def check_database_url(url: str) -> None:
    """SQLite (a file here) or a PostgreSQL on loopback: the bench loads no other machine."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("sqlite"):
        return
    if not scheme.startswith("postgresql"):
        raise BenchError(
            f"--database-url: expected sqlite+aiosqlite:// or postgresql+asyncpg://, got {scheme}://"
        )
    require_loopback(url, schemes=(scheme,))


@dataclass(frozen=True, slots=True)
class HttpBenchReport:
    options: HttpBenchOptions
    summaries: list[TargetSummary]  # floor, then the peer and Postal topology by topology
    started_at: str
    closed_loop_tool: str  # "wrk" or "built-in"
    body_bytes: int  # the size of every target's response body
    servers: dict[str, str]  # target (and topology, when several) -> its URL (closed since)
    cpus: int | None
    key_prefixes: list[str]  # the Redis keys the peers and Postals read, deleted since
    setups: list[RedisSetup]  # the topologies measured (a started cluster is gone since)

    @property
    def topologies(self) -> list[str]:
        return [setup.name for setup in self.setups]

    def summary(self, name: str, topology: str | None = None) -> TargetSummary:
        """The target `name` (on `topology`; by default the first it was measured on)."""
        return next(
            summary
            for summary in self.summaries
            if summary.name == name and topology in (None, summary.topology)
        )

    @property
    def check(self) -> http_stats.TargetCheck:
        """Postal's targets on the first topology."""
        return http_stats.check_targets(self.summaries, self.options.rate)

    def description(self, summary: TargetSummary) -> str:
        if summary.name != PEER:
            return DESCRIPTIONS[summary.name]
        setup = next(setup for setup in self.setups if setup.name == summary.topology)
        if topology_name(Topology.from_url(setup.read_url)) == SINGLE:
            return DESCRIPTIONS[PEER]
        how = plain_description(setup.read_url, PEER_POOL_SIZE)
        return f"Starlette + one GET per request by {how} (the peer)"

    def to_json(self) -> dict[str, object]:
        options = self.options
        settings = asdict(options) | {
            "redis_url": masked(options.redis_url),
            "write_url": options.write_url and masked(options.write_url),
            "database_url": options.database_url and mask_url(options.database_url),
            "closed_loop_tool": self.closed_loop_tool,
            "body_bytes": self.body_bytes,
            "servers": self.servers,
            "cpus": self.cpus,
            "key_prefixes": self.key_prefixes,
        }
        checks = [
            http_stats.check_targets(self.summaries, options.rate, topology).to_json()
            | {"topology": topology}
            for topology in self.topologies
        ]
        return {
            "benchmark": "http",
            "started_at": self.started_at,
            "settings": settings,
            "topologies": [
                {
                    "name": setup.name,
                    "read_url": masked(setup.read_url),
                    "write_url": masked(setup.write_url),
                }
                for setup in self.setups
            ],
            "targets": [
                http_stats.summary_json(summary, self.description(summary))
                for summary in self.summaries
            ],
            "target": self.check.to_json(),
            "checks": checks,
            "versus": http_stats.versus_json(self.summaries),
        }


def _loop_result(result: loadgen.LoadResult, details: dict[str, object]) -> RunResult:
    return summarize_run(
        result.latencies,
        errors=result.errors,
        elapsed=result.elapsed,
        first_error=result.first_error,
        details=details | {"sent": result.sent, "connections": result.connections},
    )


async def measure_closed(
    target: loadgen.HttpTarget, options: HttpBenchOptions, label: str, progress: ProgressFn
) -> RunResult:
    """The closed loop: a warm-up then the measured load (wrk's, when given)."""
    planned = options.warmup + options.duration

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
        )
        return _loop_result(result, {"tool": "built-in"})
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
    output = await run_tool(
        command, seconds + TOOL_GRACE, tick(options.warmup, "closed loop (wrk)")
    )
    try:
        return http_stats.parse_wrk(output)
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
        self.postal: PostalConfig | None = None
        self.post: PreparedPost | None = None
        self.body = constant_body(options.value_size)

    def _server(
        self, name: str, command: list[str], port: int, env: dict[str, str]
    ) -> ServerProcess:
        title = f"{name}{self.label.replace(' · ', ' on ')}"  # "postal on cluster"
        server = ServerProcess(title, command, port, env, self.workdir)
        self.servers[name] = server
        server.start()
        return server

    async def prepare(self) -> None:
        """Postal first (its post decides the body everyone serves), then the floor and peer."""
        options, setup = self.options, self.setup
        self.workdir.mkdir(parents=True, exist_ok=True)
        post_id = DEFAULT_POST_ID
        if POSTAL in self.names:
            self.postal = PostalConfig.create(
                setup.read_url, options.database_url, self.workdir, setup.write_url
            )
            port = free_port()
            server = self._server(
                POSTAL, postal_command(port, options.workers), port, self.postal.environment
            )
            await server.wait_ready(READY_PATH)
            self.post = await prepare_postal_post(
                server, self.postal, setup.write_url, options.value_size
            )
            post_id, self.body = self.post.post_id, self.post.body
            self.paths[POSTAL] = self.post.path
            if not self.post.cache_confirmed:
                self.notes[POSTAL] = "its cache entry was not seen in Redis before measuring"
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
                command = uvicorn_command(FACTORIES[name], port, options.workers)
                started.append(self._server(name, command, port, environment))
                self.paths[name] = path
        await asyncio.gather(*(server.wait_ready(path) for server in started))

    @property
    def key_prefixes(self) -> list[str]:
        postal = [] if self.postal is None else [self.postal.key_prefix]
        return [self.peer_prefix, *postal]

    async def close(self) -> None:
        try:
            postal = self.servers.get(POSTAL)
            if postal and self.postal and self.post and postal.returncode() is None:
                await delete_post(postal, self.postal, self.post.post_id)
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
    closed = await measure_closed(state.target(name), options, label, progress)
    opened = await measure_open(state.target(name), options, label, progress)
    logged = [line for line in server.log_since(position) if line.strip()]
    first = logged[0][:LOG_LINE_SHOWN] if logged else None
    return HttpRun(closed, opened, len(logged), first)


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


def render_report(report: HttpBenchReport, console: Console) -> None:
    """The table, what was measured how, one legend line per target, the target check."""
    options = report.options

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    several = len(report.setups) > 1
    where = f" on {' and '.join(report.topologies)}" if several else ""
    title = (
        f"postal bench http: GET of a {report.body_bytes:,} B post{where}, {options.workers}"
        f" uvicorn worker(s), {format_duration(options.duration)} x {options.runs} run(s)"
    )
    if several:
        baseline = report.topologies[0]
        columns = [c.format(baseline=baseline) for c in http_stats.TOPOLOGY_COLUMNS]
        print_grouped_table(console, title, columns, http_stats.topology_rows(report.summaries))
    else:
        table = Table(title=title)
        for column in http_stats.COLUMNS:
            table.add_column(
                column, justify="left" if column == "target" else "right", no_wrap=True
            )
        for row in http_stats.table_rows(report.summaries):
            table.add_row(*row)
        console.print(table)
    say(
        f"req/s: closed loop, {options.connections} connections back to back"
        f" ({report.closed_loop_tool})\n"
        f"p50/p99/max: open loop at {options.rate:,.0f} req/s, each request timed from its"
        " scheduled send (no coordinated omission)\n"
        "medians of runs; errors (non-2xx, failed) summed over runs and loops;"
        " ratios: median of per-run ratios\n"
        f"client and server share this machine ({report.cpus or '?'} CPUs): the load generator"
        " takes CPU from the server;\ncompare ratios from one run, not absolute figures"
    )
    if several:
        say(
            f"vs peer, vs floor: within the topology (the floor, which has no Redis, against the"
            f" {report.topologies[0]} peer); vs {report.topologies[0]}: the same target on"
            f" {report.topologies[0]}, run by run (the runs alternate between topologies)"
        )
    for summary in report.summaries:
        on = f" on {summary.topology}" if several and summary.topology else ""
        note = f" ({summary.note})" if summary.note else ""
        say(f"  {summary.name}{on}: {report.description(summary)}{note}")
        each_run = http_stats.runs_line(summary)
        if each_run:
            say(f"    {each_run}")
        runs = [loop for run in summary.runs for loop in (run.closed, run.open)]
        first_error = next((loop.first_error for loop in runs if loop.first_error), None)
        if first_error:
            say(f"    first error: {first_error}")
    if several:
        for setup in report.setups:
            say(f"{setup.name}: {masked(setup.read_url)}")
    for topology in report.topologies if several else [None]:
        check = http_stats.check_targets(report.summaries, options.rate, topology)
        say(f"{topology}: {check.line()}" if topology else check.line())
