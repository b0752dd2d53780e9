"""`postal bench cache`: GETs of ~1 KB values through Postal's client, next to its peers.

Profiles, all against the same Redis, in one process, interleaved run by run:

- `reference`: plain redis.asyncio as a user would write it for the topology (one server: a
  BlockingConnectionPool(max_connections=50)), the peer that the ratios are taken against;
- `tuned` and `before`: Postal's CacheClient with the TUNED and BEFORE profiles;
- `new conn`: a new redis.asyncio connection per GET (dial, handshake, GET, close; no cap);
- `redis-benchmark`: Redis's own tool as the floor, when installed and when it can load the
  topology as the profiles do (one server, a Sentinel's primary, a cluster with `--cluster`).

The Redis is the `--url` as given (one server, replicas, Sentinel, cluster), or, with
`--topologies single,cluster`, both the one server of the URL and a Redis Cluster of three masters
that the bench starts: every profile then runs on each, interleaved run by run, and the report
sets each profile's figures on one topology next to its figures on the other.

Each operation is timed from the moment it is requested (pool wait included) to its answer;
failed operations count as errors and their latency is kept (a caller waited that long too).
Every run builds fresh clients, so no profile inherits another's warm connections.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from redis.asyncio.cluster import RedisCluster
from rich.console import Console

from postal.cache import (
    BEFORE,
    TUNED,
    CacheClient,
    Profile,
    RedisEndpoint,
    Topology,
    format_duration,
)
from postal_bench import stats
from postal_bench.errors import BenchError
from postal_bench.load import Op, ProgressFn, Tally, no_progress, run_load, run_tool
from postal_bench.output import print_grouped_table, render_table
from postal_bench.redis_topologies import (
    REPLICAS,
    SENTINEL,
    SINGLE,
    RedisSetup,
    check_setups,
    delete_prefix,
    masked,
    new_connection_reads,
    plain_description,
    plain_primary,
    plain_reads,
    populate_keys,
    redis_setups,
    require_loopback_servers,
    sentinel_servers,
    topology_name,
)
from postal_bench.stats import ProfileSummary, RunResult

# A host name, as services use: the "before" profile then pays a lookup per connection, as in
# the incident (an IP literal would skip DNS altogether).
DEFAULT_URL = "redis://localhost:6379/0"
REFERENCE_POOL_SIZE = 50  # connections in the reference peer's BlockingConnectionPool
KEY_COUNT = 1000  # distinct keys read, each task walking them from its own offset
KEY_DIGITS = 12  # key names are numbers of this many digits: redis-benchmark's `__rand_int__`
WARMUP = 0.5  # seconds of unmeasured load before each measured run
CALIBRATION_REQUESTS = 20_000  # redis-benchmark's warm-up, which also measures its rate
PROBE_REQUESTS = 1_000  # redis-benchmark SETs that show which hash tags it uses on a cluster
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
    write_url: str | None = None  # where the keys are written; None: `url` (replicas need it)
    topologies: tuple[str, ...] = ()  # e.g. ("single", "cluster"); (): `url` as given

    def check(self) -> None:
        check_setups(self.topologies, self.url, self.write_url)
        for name in ("concurrency", "value_size", "runs", "keys"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("duration must be positive and warm-up not negative")


@dataclass(frozen=True, slots=True)
class Workload:
    """Where the keys are: Postal clients take `names` (they add the prefix), others `full_keys`."""

    setup: RedisSetup
    prefix: str
    names: list[str]

    @classmethod
    def create(cls, setup: RedisSetup, prefix: str, count: int) -> Workload:
        # 12 digits: the form redis-benchmark gives `__rand_int__`, so it reads these very keys.
        return cls(setup, prefix, [f"{index:0{KEY_DIGITS}d}" for index in range(count)])

    @property
    def topology(self) -> str:
        return self.setup.name

    @property
    def full_keys(self) -> list[str]:
        return [self.prefix + name for name in self.names]


def new_prefix() -> str:
    return f"postal-bench:{uuid.uuid4().hex[:12]}:"


@dataclass(slots=True)
class Session:
    """An open profile: the operation to time, and counters to report (as deltas) per run."""

    op: Op
    counters: Callable[[], dict[str, float]] = dict


Opener = Callable[[Workload], AbstractAsyncContextManager[Session]]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    open: Opener


@asynccontextmanager
async def _open_reference(workload: Workload) -> AsyncIterator[Session]:
    keys = workload.full_keys
    async with plain_reads(
        workload.setup.read_url, pool_size=REFERENCE_POOL_SIZE, timeout=PEER_TIMEOUT
    ) as get:
        yield Session(lambda index: get(keys[index]))


def _postal_opener(profile: Profile) -> Opener:
    @asynccontextmanager
    async def open_postal(workload: Workload) -> AsyncIterator[Session]:
        client = CacheClient.create(
            read_url=workload.setup.read_url,
            write_url=workload.setup.write_url,
            profile=profile,
            key_prefix=workload.prefix,
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
    async with new_connection_reads(workload.setup.read_url, timeout=PEER_TIMEOUT) as get:
        yield Session(lambda index: get(keys[index]))


REFERENCE = "reference"
TARGETS = (
    Target(REFERENCE, "plain redis.asyncio (how: see the topology)", _open_reference),
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
    progress: ProgressFn,
) -> RunResult:
    """One run of `target` on clients of its own: a warm-up, then the measured load, no break."""
    planned = options.warmup + options.duration
    before: dict[str, float] = {}

    def tick(elapsed: float) -> None:
        phase = "warm-up" if elapsed < options.warmup else "measuring"
        progress(f"{label} · {phase}", elapsed, planned)

    async with target.open(workload) as session:
        gc.collect()
        tally = Tally()
        elapsed = await run_load(
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


# -- the floor: redis-benchmark ----------------------------------------------------------------


class FloorSkipped(BenchError):
    """redis-benchmark cannot load this topology the way the profiles do."""


@dataclass(frozen=True, slots=True)
class FloorPlan:
    """How redis-benchmark reaches the keys: the tool, its endpoint arguments, and the key it
    GETs (its `__rand_int__` becoming a key number)."""

    executable: str
    endpoint: list[str]
    key: str


@dataclass(slots=True)
class FloorState:
    """A topology's floor: its plan, its runs, or why it has none."""

    plan: FloorPlan | None = None
    runs: list[RunResult] = field(default_factory=list)
    note: str | None = None


def floor_endpoint_args(endpoint: RedisEndpoint, *, cluster: bool = False) -> list[str]:
    """redis-benchmark's arguments for `endpoint` (host, port, database, login); with `cluster`,
    a seed node of `--cluster` mode (which has database 0 only)."""
    args = ["--cluster"] if cluster else []
    args += ["-h", endpoint.host, "-p", str(endpoint.port)]
    if not cluster:
        args += ["--dbnum", str(endpoint.db)]
    if endpoint.username:
        args += ["--user", endpoint.username]
    if endpoint.password:
        args += ["-a", endpoint.password]
    if endpoint.tls:
        args.append("--tls")
    return args


async def plan_floor(
    executable: str,
    workload: Workload,
    options: CacheBenchOptions,
    label: str,
    progress: ProgressFn,
) -> FloorPlan:
    """How redis-benchmark reads `workload`'s keys; FloorSkipped where it cannot."""
    topology = Topology.from_url(workload.setup.read_url)
    name = topology_name(topology)
    key = f"{workload.prefix}__rand_int__"
    if name == REPLICAS or topology.replicas:
        raise FloorSkipped("reads are spread over replicas; redis-benchmark loads one server")
    if name == SINGLE:
        return FloorPlan(executable, floor_endpoint_args(topology.endpoints[0]), key)
    if name == SENTINEL:
        [primary] = await sentinel_servers(topology)
        return FloorPlan(executable, floor_endpoint_args(primary), key)
    return await plan_cluster_floor(executable, workload, options, label, progress)


async def plan_cluster_floor(
    executable: str,
    workload: Workload,
    options: CacheBenchOptions,
    label: str,
    progress: ProgressFn,
) -> FloorPlan:
    """`redis-benchmark --cluster` keeps each client on one master and puts, where a key says
    `{tag}`, a hash tag of one of that master's slots. It picks the tags itself, so a short run
    of SETs shows them; the bench then writes its values under every master's tag, and the floor
    reads values of the same size as the profiles do, not nil replies."""
    seed = Topology.from_url(workload.setup.read_url).endpoints[0]
    endpoint = floor_endpoint_args(seed, cluster=True)
    stem = f"{workload.prefix}floor:"
    key = f"{stem}{{tag}}__rand_int__"
    probe = [
        executable, *endpoint, "-c", str(options.concurrency), "-n", str(PROBE_REQUESTS),
        "-r", "1", "SET", key, "probe",
    ]  # fmt: skip
    await run_tool(
        probe, TOOL_GRACE, lambda elapsed: progress(f"{label} · finding its keys", elapsed, 1.0)
    )
    async with plain_primary(workload.setup.write_url) as client:
        assert isinstance(client, RedisCluster)  # the read URL is a cluster's: so is the write
        probed = [found.decode() async for found in client.scan_iter(f"{stem}*")]
        tags = sorted({found[len(stem) : -KEY_DIGITS] for found in probed})
        masters = len(client.get_primaries())
    if len(tags) != masters:
        raise BenchError(
            f"redis-benchmark used {len(tags)} hash tag(s) on {masters} masters: its keys"
            " cannot be written beforehand"
        )
    keys = [f"{stem}{tag}{name}" for tag in tags for name in workload.names]
    await populate_keys(workload.setup.write_url, keys, options.value_size)
    return FloorPlan(executable, endpoint, key)


async def measure_floor(
    plan: FloorPlan,
    workload: Workload,
    options: CacheBenchOptions,
    label: str,
    progress: ProgressFn,
) -> RunResult:
    """redis-benchmark GETs of the bench's keys: a calibration run, then about `duration`'s worth.

    A custom `GET <prefix>__rand_int__` with `-r`, not `-t get`: the built-in GET test reads
    `key:__rand_int__`, which nothing wrote, so it would time nil replies, not 1 KB values.
    """
    base = [
        plan.executable, *plan.endpoint,
        "-c", str(options.concurrency), "-d", str(options.value_size),
        "-r", str(len(workload.names)), "--csv",
    ]  # fmt: skip
    command = ["GET", plan.key]
    planned = options.warmup + options.duration

    def tick(phase: str, offset: float) -> Callable[[float], None]:
        return lambda elapsed: progress(f"{label} · {phase}", offset + elapsed, planned)

    limit = planned + TOOL_GRACE
    calibration = await run_tool(
        [*base, "-n", str(CALIBRATION_REQUESTS), *command], limit, tick("warm-up", 0.0)
    )
    rate, _, _ = stats.parse_redis_benchmark(calibration)
    requests = max(1000, round(rate * options.duration))
    output = await run_tool(
        [*base, "-n", str(requests), *command], limit, tick("measuring", options.warmup)
    )
    rps, p50, p99 = stats.parse_redis_benchmark(output)
    elapsed = requests / rps if rps > 0 else 0.0
    return RunResult(requests, 0, elapsed, p50, p99, None, details={"requests": requests})


async def prepare_floor(
    workload: Workload, options: CacheBenchOptions, label: str, progress: ProgressFn
) -> FloorState:
    """The floor's plan on `workload`'s topology, or the note saying why there is none."""
    if not options.redis_benchmark:
        return FloorState(note="not run: not installed, or --no-floor")
    try:
        plan = await plan_floor(options.redis_benchmark, workload, options, label, progress)
    except FloorSkipped as exc:
        return FloorState(note=f"not run: {exc}")
    except (BenchError, OSError, ValueError, TimeoutError) as exc:
        return FloorState(note=f"failed, no floor: {type(exc).__name__}: {exc}")
    return FloorState(plan)


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheBenchReport:
    options: CacheBenchOptions
    summaries: list[ProfileSummary]  # topology by topology: TARGETS, then the floor
    descriptions: dict[str, str]  # profile -> what it is (the reference's: see `peers`)
    started_at: str
    key_prefix: str  # the keys read, deleted when the bench ended
    setups: list[RedisSetup]  # the topologies measured (a started cluster is gone since)
    peers: dict[str, str]  # topology -> what the reference is there

    @property
    def topologies(self) -> list[str]:
        return [setup.name for setup in self.setups]

    def summary(self, name: str, topology: str | None = None) -> ProfileSummary:
        """The profile `name` on `topology` (by default, the first topology)."""
        topology = topology or self.topologies[0]
        return next(s for s in self.summaries if s.name == name and s.topology == topology)

    def description(self, summary: ProfileSummary) -> str:
        if summary.name == REFERENCE:
            return self.peers.get(summary.topology, "")
        return self.descriptions.get(summary.name, "")

    def to_json(self) -> dict[str, object]:
        options = self.options
        settings = asdict(options) | {
            "url": masked(options.url),
            "write_url": options.write_url and masked(options.write_url),
        }
        targets = [
            stats.target_json(self.summary("tuned", name)) | {"topology": name}
            for name in self.topologies
        ]
        return {
            "benchmark": "cache",
            "started_at": self.started_at,
            "settings": settings | {"reference": REFERENCE, "key_prefix": self.key_prefix},
            "topologies": [
                {
                    "name": setup.name,
                    "read_url": masked(setup.read_url),
                    "write_url": masked(setup.write_url),
                    "reference": self.peers.get(setup.name),
                }
                for setup in self.setups
            ],
            "profiles": [
                stats.summary_json(summary, self.description(summary)) for summary in self.summaries
            ],
            "target": targets[0],
            "targets": targets,
            "versus": stats.versus_json(self.summaries),
        }


async def run_cache_bench(
    options: CacheBenchOptions, progress: ProgressFn = no_progress
) -> CacheBenchReport:
    """Set the topologies up, write the keys, run every profile `runs` times interleaved (on
    each topology in turn), delete the keys, stop what was started, summarize."""
    options.check()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    prefix = new_prefix()
    with redis_setups(options.topologies, options.url, options.write_url) as setups:
        workloads = [Workload.create(setup, prefix, options.keys) for setup in setups]
        for setup in setups:  # before anything is written: a Sentinel may name a remote primary
            await require_loopback_servers(setup.read_url)
            await require_loopback_servers(setup.write_url)
        results, floors = await _measure_all(workloads, options, progress)
    summaries = []
    for setup in setups:
        reference = results[setup.name, REFERENCE]
        for target in TARGETS:
            runs = results[setup.name, target.name]
            summaries.append(
                stats.summarize_profile(target.name, runs, reference, topology=setup.name)
            )
        floor = floors[setup.name]
        floor_runs = [] if floor.note is not None else floor.runs
        summaries.append(
            stats.summarize_profile(
                FLOOR, floor_runs, reference, note=floor.note, topology=setup.name
            )
        )
    descriptions = {target.name: target.description for target in TARGETS}
    descriptions[FLOOR] = FLOOR_DESCRIPTION
    peers = {setup.name: plain_description(setup.read_url, REFERENCE_POOL_SIZE) for setup in setups}
    return CacheBenchReport(
        options, summaries, descriptions, started_at, prefix, list(setups), peers
    )


async def _measure_all(
    workloads: list[Workload], options: CacheBenchOptions, progress: ProgressFn
) -> tuple[dict[tuple[str, str], list[RunResult]], dict[str, FloorState]]:
    """Each topology's keys written and floor planned, then the runs: run by run, topology by
    topology, profile by profile; the keys deleted in the end. The runs by (topology, profile),
    and each topology's floor."""
    results: dict[tuple[str, str], list[RunResult]] = {
        (workload.topology, target.name): [] for workload in workloads for target in TARGETS
    }
    floors: dict[str, FloorState] = {}

    def where(workload: Workload) -> str:
        return f" · {workload.topology}" if len(workloads) > 1 else ""

    try:
        for workload in workloads:
            setup = workload.setup
            await populate_keys(setup.write_url, workload.full_keys, options.value_size)
            floors[workload.topology] = await prepare_floor(
                workload, options, f"{FLOOR}{where(workload)}", progress
            )
        for run in range(1, options.runs + 1):
            for workload in workloads:
                for target in TARGETS:
                    label = f"{target.name}{where(workload)} · run {run}/{options.runs}"
                    results[workload.topology, target.name].append(
                        await measure(target, workload, options, label, progress)
                    )
                floor = floors[workload.topology]
                if floor.plan is None or floor.note is not None:
                    continue
                label = f"{FLOOR}{where(workload)} · run {run}/{options.runs}"
                try:
                    floor.runs.append(
                        await measure_floor(floor.plan, workload, options, label, progress)
                    )
                except (BenchError, OSError, ValueError, TimeoutError) as exc:
                    floor.note = f"failed, no floor: {type(exc).__name__}: {exc}"
    finally:
        for workload in workloads:
            await delete_prefix(workload.setup.write_url, workload.prefix)
    return results, floors


def render_report(report: CacheBenchReport, console: Console) -> None:
    """The table, one legend line per profile, and the target check line(s)."""
    options = report.options

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    where = " on " + " and ".join(report.topologies)
    title = (
        f"postal bench cache: GET of {options.value_size} B values{where}, {options.concurrency}"
        f" tasks, {format_duration(options.duration)} x {options.runs} run(s)"
    )
    caption = (
        "medians of runs; latency from request to reply, pool wait and failed ops included;\n"
        "errors summed over runs; ratios: median of the per-run ratios to the reference"
    )
    if len(report.setups) == 1:
        descriptions = report.descriptions | {REFERENCE: report.peers[report.topologies[0]]}
        render_table(console, title, report.summaries, descriptions, caption)
        say(stats.target_line(report.summary("tuned")))
        return
    baseline = report.topologies[0]
    columns = [column.format(baseline=baseline) for column in stats.TOPOLOGY_COLUMNS]
    print_grouped_table(console, title, columns, stats.topology_rows(report.summaries))
    say(
        f"{caption}\nvs ref: to the reference on the same topology; vs {baseline}: to the same"
        f" profile on {baseline}, run by run (the runs alternate between topologies)"
    )
    for name in [target.name for target in TARGETS] + [FLOOR]:
        say(f"  {name}: {report.descriptions[name]}")
        for topology in report.topologies:
            summary = report.summary(name, topology)
            first_error = next((run.first_error for run in summary.runs if run.first_error), None)
            if name == REFERENCE:
                say(f"    {topology}: {report.peers[topology]}")
            if summary.note:
                say(f"    {topology}: {summary.note}")
            if first_error:
                say(f"    {topology}: first error: {first_error}")
    for setup in report.setups:
        say(f"{setup.name}: {masked(setup.read_url)}")
    for topology in report.topologies:
        say(f"{topology}: {stats.target_line(report.summary('tuned', topology))}")
