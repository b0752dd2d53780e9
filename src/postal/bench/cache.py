"""`postal bench cache`: GETs of ~1 KB values through Postal's client, next to its peers.

Profiles, all against one loopback Redis, in one process, interleaved run by run:

- `reference`: plain redis.asyncio on a BlockingConnectionPool(max_connections=50), the peer
  that the ratios are taken against;
- `tuned` and `before`: Postal's CacheClient with the TUNED and BEFORE profiles;
- `new conn`: a new redis.asyncio client per GET (dial, handshake, GET, close; no cap);
- `redis-benchmark`: Redis's own tool as the floor, when installed.

Each operation is timed from the moment it is requested (pool wait included) to its answer;
failed operations count as errors and their latency is kept (a caller waited that long too).
Every run builds fresh clients, so no profile inherits another's warm connections.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis.asyncio as redis
from rich.console import Console

from postal import bench
from postal.bench import stats
from postal.bench.stats import ProfileSummary, RunResult
from postal.cache import BEFORE, TUNED, CacheClient, Profile
from postal.cache.durations import format_duration
from postal.cache.urls import RedisEndpoint, mask_url

# A host name, as services use: the "before" profile then pays a lookup per connection, as in
# the incident (an IP literal would skip DNS altogether).
DEFAULT_URL = "redis://localhost:6379/0"
REFERENCE_POOL_SIZE = 50  # connections in the reference peer's BlockingConnectionPool
KEY_COUNT = 1000  # distinct keys read, each task walking them from its own offset
WARMUP = 0.5  # seconds of unmeasured load before each measured run
CALIBRATION_REQUESTS = 20_000  # redis-benchmark's warm-up, which also measures its rate
PEER_TIMEOUT = 5.0  # seconds: bounds the redis-py peers' dials, reads and pool waits, so the bench
# always stops by itself (redis-py's default is no socket timeout); never reached on a healthy run
TOOL_GRACE = 30.0  # seconds redis-benchmark may overrun its planned time before it is killed


@dataclass(frozen=True, slots=True)
class CacheBenchOptions:
    url: str = DEFAULT_URL
    concurrency: int = 100  # tasks issuing GETs back to back
    value_size: int = 1024  # bytes per value
    duration: float = 3.0  # seconds per measured run
    runs: int = 3  # medians are taken over these
    warmup: float = WARMUP
    keys: int = KEY_COUNT
    redis_benchmark: str | None = None  # path to redis-benchmark; None: no floor

    def check(self) -> None:
        bench.require_loopback(self.url)
        for name in ("concurrency", "value_size", "runs", "keys"):
            if getattr(self, name) < 1:
                raise bench.BenchError(f"{name} must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise bench.BenchError("duration must be positive and warm-up not negative")


@dataclass(frozen=True, slots=True)
class Workload:
    """Where the keys are: Postal clients take `names` (they add the prefix), others `full_keys`."""

    url: str
    prefix: str
    names: list[str]

    @classmethod
    def create(cls, url: str, count: int) -> Workload:
        prefix = f"postal-bench:{uuid.uuid4().hex[:12]}:"
        # 12 digits: the form redis-benchmark gives `__rand_int__`, so it reads these very keys.
        return cls(url, prefix, [f"{index:012d}" for index in range(count)])

    @property
    def full_keys(self) -> list[str]:
        return [self.prefix + name for name in self.names]


@dataclass(slots=True)
class Session:
    """An open profile: the operation to time, and counters to report (as deltas) per run."""

    op: bench.Op
    counters: Callable[[], dict[str, float]] = dict


Opener = Callable[[Workload], AbstractAsyncContextManager[Session]]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    open: Opener


@asynccontextmanager
async def _open_reference(workload: Workload) -> AsyncIterator[Session]:
    pool = redis.BlockingConnectionPool.from_url(
        workload.url,
        max_connections=REFERENCE_POOL_SIZE,
        timeout=PEER_TIMEOUT,
        socket_timeout=PEER_TIMEOUT,
        socket_connect_timeout=PEER_TIMEOUT,
    )
    client = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    keys = workload.full_keys
    try:
        yield Session(lambda index: client.get(keys[index]))
    finally:
        await client.aclose()


def _postal_opener(profile: Profile) -> Opener:
    @asynccontextmanager
    async def open_postal(workload: Workload) -> AsyncIterator[Session]:
        client = CacheClient.create(
            read_url=workload.url, profile=profile, key_prefix=workload.prefix
        )
        await client.start()  # the tuned profile opens its min-idle connections here
        names = workload.names

        def counters() -> dict[str, float]:
            read = client.stats()["read"]
            return {
                "opened": read.opened,
                "waits": read.waits,
                "wait_time_s": read.wait_time,
                "pool_timeouts": read.timeouts,
            }

        try:
            yield Session(lambda index: client.get(names[index]), counters)
        finally:
            await client.aclose()

    return open_postal


@asynccontextmanager
async def _open_new_connection(workload: Workload) -> AsyncIterator[Session]:
    keys = workload.full_keys

    async def get_on_new_connection(index: int) -> object:
        client = redis.Redis.from_url(
            workload.url, socket_timeout=PEER_TIMEOUT, socket_connect_timeout=PEER_TIMEOUT
        )
        try:
            return await client.get(keys[index])
        finally:
            await client.aclose()

    yield Session(get_on_new_connection)


TARGETS = (
    Target("reference", "redis.asyncio, BlockingConnectionPool(50)", _open_reference),
    Target("tuned", "Postal CacheClient, TUNED profile", _postal_opener(TUNED)),
    Target("before", "Postal CacheClient, BEFORE profile (the seed's)", _postal_opener(BEFORE)),
    Target("new conn", "redis.asyncio, a new connection per GET", _open_new_connection),
)
FLOOR = "redis-benchmark"
FLOOR_DESCRIPTION = "redis-benchmark GET on the same keys (the floor)"


async def measure(
    target: Target,
    workload: Workload,
    options: CacheBenchOptions,
    label: str,
    progress: bench.ProgressFn,
) -> RunResult:
    """One run of `target` on clients of its own: a warm-up, then the measured load, no break."""
    planned = options.warmup + options.duration
    before: dict[str, float] = {}

    def tick(elapsed: float) -> None:
        phase = "warm-up" if elapsed < options.warmup else "measuring"
        progress(f"{label} · {phase}", elapsed, planned)

    async with target.open(workload) as session:
        gc.collect()
        tally = bench.Tally()
        elapsed = await bench.run_load(
            session.op,
            concurrency=options.concurrency,
            keys=len(workload.names),
            warmup=options.warmup,
            seconds=options.duration,
            tally=tally,
            tick=tick,
            on_measure=lambda: before.update(session.counters()),
        )
        after = session.counters()
    return stats.summarize_run(
        tally.latencies,
        errors=tally.errors,
        elapsed=elapsed,
        first_error=tally.first_error,
        details={name: after[name] - before.get(name, 0) for name in after},
    )


def floor_endpoint_args(url: str) -> list[str]:
    """redis-benchmark's arguments for the endpoint in `url` (host, port, database, login)."""
    endpoint = RedisEndpoint.from_url(url)
    args = ["-h", endpoint.host, "-p", str(endpoint.port), "--dbnum", str(endpoint.db)]
    if endpoint.username:
        args += ["--user", endpoint.username]
    if endpoint.password:
        args += ["-a", endpoint.password]
    if endpoint.tls:
        args.append("--tls")
    return args


async def measure_floor(
    executable: str,
    workload: Workload,
    options: CacheBenchOptions,
    label: str,
    progress: bench.ProgressFn,
) -> RunResult:
    """redis-benchmark GETs of the bench's keys: a calibration run, then about `duration`'s worth.

    A custom `GET <prefix>__rand_int__` with `-r`, not `-t get`: the built-in GET test reads
    `key:__rand_int__`, which nothing wrote, so it would time nil replies, not 1 KB values.
    """
    base = [
        executable, *floor_endpoint_args(workload.url),
        "-c", str(options.concurrency), "-d", str(options.value_size),
        "-r", str(len(workload.names)), "--csv",
    ]  # fmt: skip
    command = ["GET", f"{workload.prefix}__rand_int__"]
    planned = options.warmup + options.duration

    def tick(phase: str, offset: float) -> Callable[[float], None]:
        return lambda elapsed: progress(f"{label} · {phase}", offset + elapsed, planned)

    limit = planned + TOOL_GRACE
    calibration = await bench.run_tool(
        [*base, "-n", str(CALIBRATION_REQUESTS), *command], limit, tick("warm-up", 0.0)
    )
    rate, _, _ = stats.parse_redis_benchmark(calibration)
    requests = max(1000, round(rate * options.duration))
    output = await bench.run_tool(
        [*base, "-n", str(requests), *command], limit, tick("measuring", options.warmup)
    )
    rps, p50, p99 = stats.parse_redis_benchmark(output)
    elapsed = requests / rps if rps > 0 else 0.0
    return RunResult(requests, 0, elapsed, p50, p99, None, details={"requests": requests})


@dataclass(frozen=True, slots=True)
class CacheBenchReport:
    options: CacheBenchOptions
    summaries: list[ProfileSummary]
    descriptions: dict[str, str]
    started_at: str
    key_prefix: str  # the keys read, deleted when the bench ended

    def summary(self, name: str) -> ProfileSummary:
        return next(summary for summary in self.summaries if summary.name == name)

    def to_json(self) -> dict[str, object]:
        settings = asdict(self.options) | {"url": mask_url(self.options.url)}
        return {
            "benchmark": "cache",
            "started_at": self.started_at,
            "settings": settings | {"reference": TARGETS[0].name, "key_prefix": self.key_prefix},
            "profiles": [
                stats.summary_json(summary, self.descriptions.get(summary.name, ""))
                for summary in self.summaries
            ],
            "target": stats.target_json(self.summary("tuned")),
        }


async def run_cache_bench(
    options: CacheBenchOptions, progress: bench.ProgressFn = bench.no_progress
) -> CacheBenchReport:
    """Prepare the keys, run every profile `runs` times interleaved, clean up, summarize."""
    options.check()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    workload = Workload.create(options.url, options.keys)
    results: dict[str, list[RunResult]] = {target.name: [] for target in TARGETS}
    floor_runs: list[RunResult] = []
    floor_note = None if options.redis_benchmark else "not run: not installed, or --no-floor"
    await bench.populate_keys(options.url, workload.full_keys, options.value_size)
    try:
        for run in range(1, options.runs + 1):
            for target in TARGETS:
                label = f"{target.name} · run {run}/{options.runs}"
                results[target.name].append(
                    await measure(target, workload, options, label, progress)
                )
            if options.redis_benchmark and floor_note is None:
                label = f"{FLOOR} · run {run}/{options.runs}"
                try:
                    floor_runs.append(
                        await measure_floor(
                            options.redis_benchmark, workload, options, label, progress
                        )
                    )
                except (bench.BenchError, OSError, ValueError, TimeoutError) as exc:
                    floor_note = f"failed, no floor: {type(exc).__name__}: {exc}"
    finally:
        await bench.delete_prefix(options.url, workload.prefix)
    reference = results[TARGETS[0].name]
    summaries = [stats.summarize_profile(name, runs, reference) for name, runs in results.items()]
    if floor_note is not None:
        floor_runs = []
    summaries.append(stats.summarize_profile(FLOOR, floor_runs, reference, note=floor_note))
    descriptions = {target.name: target.description for target in TARGETS}
    descriptions[FLOOR] = FLOOR_DESCRIPTION
    return CacheBenchReport(options, summaries, descriptions, started_at, workload.prefix)


def render_report(report: CacheBenchReport, console: Console) -> None:
    """The table, one legend line per profile, and the target check line."""
    options = report.options
    title = (
        f"postal bench cache: GET of {options.value_size} B values, {options.concurrency} tasks,"
        f" {format_duration(options.duration)} x {options.runs} run(s)"
    )
    caption = (
        "medians of runs; latency from request to reply, pool wait and failed ops included;\n"
        "errors summed over runs; ratios: median of the per-run ratios to the reference"
    )
    bench.render_table(console, title, report.summaries, report.descriptions, caption)
    console.print(stats.target_line(report.summary("tuned")), markup=False, highlight=False)
