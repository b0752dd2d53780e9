"""`postal bench seed`: the incident's before/after table, reproduced on demand.

The incident report Postal grew from claimed: cache GET 450 ms -> < 5 ms, p99 > 500 ms -> < 10
ms, throughput 90x. This bench measures it, with the incident's conditions made explicit:

- the data: `posts` posts in a scratch PostgreSQL database (inserted with plain SQL, `seed_db`);
- between Postal and Redis, a TCP proxy adding `latency` each way (`proxy_child`, a process of
  its own), reached by a host name whose every lookup takes `dns_delay` (the scripted resolver of
  `postal_testing.resolver`, never the machine's DNS): redis://redis.postal.test:<proxy port>;
- the load: `ab -n requests -c connections`-like (`seed_load`) on GET /api/v1/posts/{id}, a
  share `hit_rate` of the requests going to a pre-warmed hot set (the first 10% of the posts)
  and the rest to posts never asked for before in the run; then as many GET /api/v1/posts.

Postal is started fresh for every run (`server_child`, POSTAL_BENCH_PROFILE=before or tuned),
with a Redis key prefix of its own so runs never share cache entries; the keys are deleted
after. Runs alternate: before, tuned, before, ... The cache figures are Postal's own, from
/metrics scraped before and after each load (`seed_metrics`); the request figures are the load
generator's. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as redis

from postal.cache import mask_url
from postal.stats.scrape import Scrape
from postal_bench import cpu_time
from postal_bench.errors import BenchError
from postal_bench.http.servers import HOST, ServerProcess, free_port
from postal_bench.imports.bench import StepProgress, no_progress
from postal_bench.imports.database import BenchDatabase, bench_database
from postal_bench.loadgen import fetch
from postal_bench.redis_topologies import delete_prefix
from postal_bench.seed.database import insert_posts
from postal_bench.seed.load import counted_loop, request_schedule
from postal_bench.seed.metrics import cache_phase, fills_done
from postal_bench.seed.options import (
    BODY_CHARS,
    SeedBenchOptions,
    through_proxy,
    with_address,
)
from postal_bench.seed.report import (
    PROFILES,
    Cpu,
    Phase,
    ProfileRun,
    TargetCheck,
    check_target,
    run_json,
)
from postal_bench.server_child import DNS_SCRIPT_VARIABLE, PROFILE_VARIABLE, server_command
from postal_testing.proxy_child import ProxyProcess
from postal_testing.resolver import BENCH_HOST, DnsScript

LOAD_LIMIT = 900.0  # s one load may take before the bench gives up on it
FILL_SETTLE = 0.5  # s without a new fill after which the warm-up's fills are taken as done
FILL_LIMIT = 30.0  # s the warm-up waits for its fills at most
WARM_PASSES = 3  # hot-set passes at most, should fills be dropped (a busy start-up)
READY_PATH = "/healthz"
METRICS_PATH = "/metrics"
ITEM_URL = "/api/v1/posts/{}"
LIST_URL = "/api/v1/posts"
LOG_LINE_SHOWN = 200  # characters of a server's first log line kept in the report
CALIBRATION_PINGS = 200  # PINGs timed through the proxy and direct, to show the real latency


async def ping_round_trip(redis_url: str, count: int = CALIBRATION_PINGS) -> float:
    """The median of `count` PINGs' round trips, one at a time, on one connection (seconds)."""
    client = redis.Redis.from_url(redis_url)
    times = []
    try:
        await client.ping()  # connected and handshaken before timing
        for _ in range(count):
            began = time.perf_counter()
            await client.ping()
            times.append(time.perf_counter() - began)
    except Exception as exc:  # whatever redis-py raises, the bench cannot start
        raise BenchError(f"cannot PING Redis at {mask_url(redis_url)}: {exc}") from exc
    finally:
        await client.aclose()
    return statistics.median(times)


@dataclass(frozen=True, slots=True)
class SeedReport:
    options: SeedBenchOptions
    started_at: str
    runs: list[ProfileRun]
    seconds: float  # the whole bench's wall time, start-up and clean-up included
    cpus: int | None
    database: str  # masked
    scratch_database: bool
    key_prefixes: list[str]  # one per run, deleted since
    proxy_round_trip: float | None = None  # s, median PING through the proxy
    direct_round_trip: float | None = None  # s, median PING straight to Redis

    def of(self, profile: str) -> list[ProfileRun]:
        return [run for run in self.runs if run.profile == profile]

    @property
    def target(self) -> TargetCheck:
        return check_target(self.runs, self.options.connections)

    def to_json(self) -> dict[str, object]:
        return {
            "benchmark": "seed",
            "started_at": self.started_at,
            "seconds": round(self.seconds, 1),
            "settings": self.options.to_json()
            | {
                "cpus": self.cpus,
                "database": self.database,
                "scratch_database": self.scratch_database,
                "key_prefixes": self.key_prefixes,
                "proxy_round_trip_ms": _ms(self.proxy_round_trip),
                "direct_round_trip_ms": _ms(self.direct_round_trip),
            },
            "profiles": {
                profile: [run_json(run) for run in self.of(profile)] for profile in PROFILES
            },
            "target": self.target.to_json(),
        }


async def scrape(server: ServerProcess) -> Scrape:
    reply = await fetch(server.base_url + METRICS_PATH)
    if reply.status != 200:
        raise server.failure(f"GET {METRICS_PATH} answered {reply.status}")
    return Scrape.parse(reply.body.decode(), time.perf_counter())


@dataclass(frozen=True, slots=True)
class CpuMark:
    """The CPU counters at one moment, to subtract."""

    server: float | None
    proxy: float | None
    load: float
    redis: float | None
    postgres: float | None
    machine: float | None

    @classmethod
    async def take(cls, server_pid: int | None, proxy: ProxyProcess) -> tuple[CpuMark, int]:
        """The counters now, and the connections the proxy has accepted so far."""
        stats = await proxy.stats()
        mark = cls(
            server=cpu_time.tree_cpu(server_pid),
            proxy=stats.cpu_s,
            load=time.process_time(),
            redis=cpu_time.processes_named("redis-server"),
            postgres=cpu_time.processes_named("postgres"),
            machine=cpu_time.machine_cpu(),
        )
        return mark, stats.accepted

    def until(self, later: CpuMark) -> Cpu:
        def spent(name: str) -> float | None:
            a, b = getattr(self, name), getattr(later, name)
            return None if a is None or b is None else round(max(0.0, b - a), 3)

        names = ("server", "proxy", "load", "redis", "postgres", "machine")
        return Cpu(**{name: spent(name) for name in names})


class SeedBench:
    """The bench's fixed parts (database, proxy, DNS script) and one method per step."""

    def __init__(
        self,
        options: SeedBenchOptions,
        database: BenchDatabase,
        proxy: ProxyProcess,
        workdir: Path,
    ) -> None:
        self.options = options
        self.database = database
        self.proxy = proxy
        self.workdir = workdir
        self.dns_script = workdir / "dns.json"
        self.key_prefixes: list[str] = []
        self.token = secrets.token_urlsafe(24)
        DnsScript(hosts={BENCH_HOST: [HOST]}, delay=options.dns_delay).write(self.dns_script)

    def environment(self, profile: str, prefix: str) -> dict[str, str]:
        redis_url = through_proxy(self.options.redis_url, self.proxy.port)
        return {
            "READ_REDIS_URL": redis_url,
            "WRITE_REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "DATABASE_URL": self.database.url,
            "POSTAL_API_TOKEN": self.token,
            "POSTAL_DATA_DIR": str(self.workdir),
            "POSTAL_LOG_LEVEL": "WARNING",
            PROFILE_VARIABLE: profile,
            DNS_SCRIPT_VARIABLE: str(self.dns_script),
            # The incident's "before" had no near cache; the tuned profile has Postal's default.
            "NEAR_CACHE_ENABLED": "false" if profile == "before" else "true",
        }

    def item_paths(self, run: int) -> tuple[list[str], list[str]]:
        """The hot set's paths (for the warm-up), and the measured load's, one per request."""
        options = self.options
        hot = list(range(1, options.hot_posts + 1))
        cold = list(range(options.hot_posts + 1, options.posts + 1))
        schedule = request_schedule(
            options.requests, options.hit_rate, hot, cold, seed=options.seed + run
        )
        return [ITEM_URL.format(i) for i in hot], [ITEM_URL.format(i) for i in schedule]

    async def load(
        self, server: ServerProcess, paths: Sequence[str], label: str, progress: StepProgress
    ) -> Phase:
        """One measured load, with the scrapes, proxy counts and CPU marks around it."""
        server_pid = server.pid
        first = await scrape(server)
        mark, accepted = await CpuMark.take(server_pid, self.proxy)
        started = time.perf_counter()

        def tick(done: int, planned: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-6)
            progress(label, done, planned, f"{done:,}/{planned:,} requests, {rate:,.0f} req/s")

        result = await counted_loop(
            HOST, server.port, paths, connections=self.options.connections, limit=LOAD_LIMIT,
            tick=tick,
        )  # fmt: skip
        later, accepted_later = await CpuMark.take(server_pid, self.proxy)
        cache = cache_phase(first, await scrape(server))
        return Phase.measured(result, cache, accepted_later - accepted, mark.until(later))

    async def warm(
        self,
        server: ServerProcess,
        hot: Sequence[str],
        label: str,
        progress: StepProgress,
        *,
        near_cache: bool = False,
    ) -> int:
        """Ask for every hot post until its cache entry was filled; how many fills landed.
        With `near_cache`, ask once more once they have: a near cache stores what Redis
        answers, so the hot set is then in memory too, as in a service that has run a while
        (left cold, the load's first reads of each hot post are Redis GETs, most of them in its
        first turns, where 100 connections start at once)."""
        start = fills_done(await scrape(server))
        filled = 0
        for attempt in range(1, WARM_PASSES + 1):
            shown = f"{label} · warming {len(hot):,} hot posts" + (
                f" (pass {attempt})" if attempt > 1 else ""
            )
            result = await counted_loop(
                HOST, server.port, hot, connections=self.options.connections, limit=LOAD_LIMIT,
                tick=partial(self._warm_tick, progress, shown),
            )  # fmt: skip
            if result.errors:
                raise BenchError(
                    f"{label}: the warm-up failed {result.errors:,} requests: {result.first_error}"
                )
            filled = await self._settled_fills(server, start, len(hot))
            if filled >= len(hot):
                break
        if near_cache:
            result = await counted_loop(
                HOST, server.port, hot, connections=self.options.connections, limit=LOAD_LIMIT,
                tick=partial(self._warm_tick, progress, f"{label} · warming the near cache"),
            )  # fmt: skip
            if result.errors:
                raise BenchError(
                    f"{label}: the warm-up failed {result.errors:,} requests: {result.first_error}"
                )
        return filled

    @staticmethod
    def _warm_tick(progress: StepProgress, label: str, done: int, planned: int) -> None:
        progress(label, done, planned, f"{done:,} requests")

    async def _settled_fills(self, server: ServerProcess, start: int, wanted: int) -> int:
        """Fills done since `start`, once `wanted` landed or none landed for FILL_SETTLE."""
        deadline = time.perf_counter() + FILL_LIMIT
        last, quiet_since = -1, time.perf_counter()
        while True:
            filled = fills_done(await scrape(server)) - start
            now = time.perf_counter()
            if filled != last:
                last, quiet_since = filled, now
            if filled >= wanted or now - quiet_since >= FILL_SETTLE or now > deadline:
                return filled
            await asyncio.sleep(0.05)

    async def measure(self, profile: str, run: int, progress: StepProgress) -> ProfileRun:
        """Start Postal with `profile`, warm its hot set, run both loads, stop it."""
        options = self.options
        label = f"{profile} · run {run}/{options.runs}"
        prefix = f"postal-bench-seed:{uuid.uuid4().hex[:12]}:"
        self.key_prefixes.append(prefix)
        port = free_port()
        environment = self.environment(profile, prefix)
        server = ServerProcess(
            f"postal-{profile}-{run}", server_command(port), port, environment, self.workdir
        )
        try:
            progress(f"{label} · starting Postal", 0, 1, "")
            server.start()
            await server.wait_ready(READY_PATH)
            hot, schedule = self.item_paths(run)
            near_cache = environment["NEAR_CACHE_ENABLED"] == "true"
            warmed = await self.warm(server, hot, label, progress, near_cache=near_cache)
            position = server.log_position()
            items = await self.load(server, schedule, f"{label} · GET {LIST_URL}/{{id}}", progress)
            listing = await self.load(
                server, [LIST_URL] * options.requests, f"{label} · GET {LIST_URL}", progress
            )
            logged = [line for line in server.log_since(position) if line.strip()]
        finally:
            server.stop()
            await delete_prefix(options.redis_url, prefix)
        return ProfileRun(
            profile=profile,
            run=run,
            items=items,
            listing=listing,
            warmed=warmed,
            log_lines=len(logged),
            first_log_line=logged[0][:LOG_LINE_SHOWN] if logged else None,
        )


async def run_seed_bench(
    options: SeedBenchOptions, progress: StepProgress = no_progress
) -> SeedReport:
    """Prepare the data and the proxy, measure each profile `runs` times interleaved, clean up."""
    options.check()
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    runs: list[ProfileRun] = []
    redis_parts = urlsplit(options.redis_url)
    with tempfile.TemporaryDirectory(prefix="postal-bench-seed-") as directory:
        progress("preparing the database", 0, 1, "")
        async with bench_database(options.database_url) as database:
            progress(f"inserting {options.posts:,} posts", 0, 1, "")
            await insert_posts(database.url, options.posts, BODY_CHARS)
            proxy = ProxyProcess(
                redis_parts.hostname or HOST,
                redis_parts.port or 6379,
                options.latency,
                log=Path(directory) / "proxy.log",
            )
            progress("starting the latency proxy", 0, 1, "")
            await proxy.start()
            try:
                progress("timing PINGs through the proxy and direct", 0, 1, "")
                proxy_round_trip = await ping_round_trip(
                    with_address(options.redis_url, HOST, proxy.port)
                )
                direct_round_trip = await ping_round_trip(options.redis_url)
                state = SeedBench(options, database, proxy, Path(directory))
                for run in range(1, options.runs + 1):
                    for profile in PROFILES:
                        runs.append(await state.measure(profile, run, progress))
            finally:
                await proxy.stop()
    return SeedReport(
        options=options,
        started_at=started_at,
        runs=runs,
        seconds=time.perf_counter() - started,
        cpus=os.cpu_count(),
        database=mask_url(database.url),
        scratch_database=database.scratch,
        key_prefixes=state.key_prefixes,
        proxy_round_trip=proxy_round_trip,
        direct_round_trip=direct_round_trip,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)
