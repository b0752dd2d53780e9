"""`postal bench import`: a generated CSV file imported into PostgreSQL, timed, sized, checked.

What one bench does, in order:

1. Generates a CSV of `rows` posts (`csv_gen`: ~500 bytes a row, quoted commas and newlines,
   the same bytes for the same seed) into a temporary directory.
2. Prepares the database (`import_db`: a scratch one by default, dropped at the end).
3. `runs` rounds; in each, every method (COPY, multi-row INSERT) imports the file once into
   emptied tables, each import in a fresh child process (`import_child`) so its peak RSS is its
   own. After each import the bench counts the rows in the database (a fast import that lost
   rows would not count) and, after the first method's, times the cache step on that import's
   keys, both ways, slice by slice: one round trip per key, and pipelines of `cache_batch_size`
   keys (`imports.cache_step.time_invalidation`, the same commands either way).
4. With `rss_rows`, the RSS check: a file of that many rows (1M by default) imported once by the
   first method, its peak RSS set against the median of the main runs'.

Redis keys go under a prefix of the bench's own and are deleted at the end; the database and
Redis must be on loopback, like every Postal benchmark's targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from postal.cache import TUNED, CacheClient, CacheError, CacheTimeouts, mask_url
from postal.imports.cache_step import time_invalidation
from postal_bench.errors import BenchError
from postal_bench.imports.child import ChildConfig
from postal_bench.imports.csv_gen import GeneratedCsv, generate_csv
from postal_bench.imports.database import BenchDatabase, bench_database, check_database_url
from postal_bench.imports.report import (
    TIMING_SLICE,
    CacheComparison,
    ImportBenchReport,
    ImportRun,
    MethodSummary,
)
from postal_bench.loopback import require_loopback
from postal_bench.redis_topologies import delete_prefix, require_loopback_redis

Method = Literal["copy", "insert"]

# The client timing the cache step both ways: Postal's tuned pools, with a write deadline that
# still stops a stuck Redis but lets a busy shared machine finish every operation (200 ms, the
# service's, did expire now and then under load, failing the bench), and no breaker.
MEASURING_PROFILE = replace(
    TUNED, timeouts=CacheTimeouts(get=TUNED.timeouts.get, set=5.0), breaker=None
)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
METHODS: tuple[Method, ...] = ("copy", "insert")
QUICK_ROWS = 20_000
MAX_ROWS = 10_000_000  # a benchmark, not a load test: ~5 GB of CSV at most
CHILD_START_LIMIT = 60.0  # seconds an import process may take beyond IMPORT_LIMIT_PER_ROW
IMPORT_LIMIT_PER_ROW = 0.001  # seconds: 1,000 rows/s, 20x below the target, before it is killed
CHILD_LINE_LIMIT = 1 << 20  # bytes in one line of the child's output (its report)
STDERR_SHOWN = 3  # lines of a failed child's stderr shown in the error

# (what runs, done, total, detail): how the runner reports its progress.
StepProgress = Callable[[str, float, float, str], None]


def parse_methods(text: str) -> tuple[Method, ...]:
    """`copy`, `insert` or `both` as the methods to run; BenchError for anything else."""
    if text == "both":
        return METHODS
    for method in METHODS:
        if text == method:
            return (method,)
    raise BenchError(f"--method: expected copy, insert or both, got {text!r}")


def no_progress(label: str, done: float, total: float, detail: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ImportBenchOptions:
    rows: int = 100_000
    runs: int = 3  # medians are taken over these
    methods: tuple[Method, ...] = METHODS
    database_url: str | None = None  # None: a scratch database, dropped at the end
    redis_url: str = DEFAULT_REDIS_URL
    seed: int = 0
    batch_size: int = 1000  # rows per database batch
    cache_batch_size: int = 1000  # keys per Redis pipeline
    rss_rows: int | None = None  # also import a file of this many rows once (the RSS check)

    def check(self) -> None:
        require_loopback(self.redis_url)
        require_loopback_redis(self.redis_url)  # and every host, if it is a list of servers
        if self.database_url is not None:
            check_database_url(self.database_url)
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise BenchError(f"methods are {', '.join(METHODS)}, each once; got {self.methods}")
        for name in ("rows", "runs", "batch_size", "cache_batch_size"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1")
        sizes = [self.rows] + ([] if self.rss_rows is None else [self.rss_rows])
        if any(not 1 <= size <= MAX_ROWS for size in sizes):
            raise BenchError(f"rows must be between 1 and {MAX_ROWS:,}")

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {
            "database_url": self.database_url and mask_url(self.database_url),
            "redis_url": mask_url(self.redis_url),
        }


@contextlib.contextmanager
def step_progress(console: Console) -> Iterator[StepProgress]:
    """A one-line rich progress display: what runs, its bar and share, a detail, elapsed time."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def show(label: str, done: float, total: float, detail: str) -> None:
            if label not in tasks:  # a new step: a fresh bar and clock
                for task in tasks.values():
                    progress.remove_task(task)
                tasks.clear()
                tasks[label] = progress.add_task(label, total=total, detail="")
            progress.update(tasks[label], completed=min(done, total), total=total, detail=detail)

        yield show


async def run_child(
    config: ChildConfig, file: GeneratedCsv, label: str, progress: StepProgress, workdir: Path
) -> dict[str, Any]:
    """Run one import process, showing its progress; its result. Killed on cancellation, or
    after a generous limit (see IMPORT_LIMIT_PER_ROW)."""
    stderr_path = workdir / "import-child.stderr"
    started = time.monotonic()
    result: dict[str, Any] | None = None
    progress(label, 0, file.size, "starting")
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "postal_bench.imports.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            limit=CHILD_LINE_LIMIT,
        )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(CHILD_START_LIMIT + IMPORT_LIMIT_PER_ROW * file.rows):
            process.stdin.write(config.to_line())
            await process.stdin.drain()
            process.stdin.close()
            async for line in process.stdout:
                message = json.loads(line)
                if "progress" in message:
                    rows = message["progress"]["rows_read"]
                    rate = rows / max(time.monotonic() - started, 1e-6)
                    detail = f"{rows:,} rows, {rate:,.0f} rows/s (start-up included)"
                    progress(label, message["progress"]["bytes_read"], file.size, detail)
                elif "result" in message:
                    result = message["result"]
            code = await process.wait()
    except BaseException as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise BenchError(f"{label}: the import process did not finish in time") from None
        raise
    if code != 0 or result is None:
        lines = stderr_path.read_text(errors="replace").strip().splitlines()
        shown = " | ".join(lines[-STDERR_SHOWN:]) or "no output"
        raise BenchError(f"{label}: the import process exited with code {code}: {shown}")
    return result


async def measure_cache_step(
    cache: CacheClient, post_ids: Sequence[int], batch: int, label: str, progress: StepProgress
) -> CacheComparison:
    """The same keys invalidated one per round trip, and `batch` per round trip.

    Slice by slice (TIMING_SLICE keys), both ways on each slice, the first way alternating:
    whatever else the machine does at a moment (a checkpoint after the import, a neighbour's
    burst) weighs on both alike, not on whichever ran second.
    """
    one_per_key = pipelined = 0.0
    try:
        for number, first in enumerate(range(0, len(post_ids), TIMING_SLICE)):
            progress(f"{label} · cache step", first, len(post_ids), f"{first:,} keys, both ways")
            chunk = post_ids[first : first + TIMING_SLICE]
            for keys_per_call in (1, batch) if number % 2 == 0 else (batch, 1):
                seconds = await time_invalidation(cache, chunk, keys_per_call=keys_per_call)
                if keys_per_call == 1:
                    one_per_key += seconds
                else:
                    pipelined += seconds
    except CacheError as exc:
        raise BenchError(f"{label}: Redis failed the cache step: {exc}") from exc
    return CacheComparison(len(post_ids), batch, one_per_key, pipelined)


class ImportBench:
    """One bench's state: the files, the database, the Redis prefix; released by the caller."""

    def __init__(self, options: ImportBenchOptions, database: BenchDatabase, workdir: Path) -> None:
        self.options = options
        self.database = database
        self.workdir = workdir
        self.key_prefix = f"postal-bench-import:{uuid.uuid4().hex[:12]}:"

    def generate(self, rows: int, progress: StepProgress) -> GeneratedCsv:
        label = f"generating {rows:,} rows"
        path = self.workdir / f"posts-{rows}.csv"
        return generate_csv(
            path,
            rows,
            seed=self.options.seed,
            progress=lambda done, total: progress(label, done, total, f"{done:,} rows"),
        )

    async def import_once(
        self, file: GeneratedCsv, method: Method, label: str, progress: StepProgress
    ) -> ImportRun:
        await self.database.empty()
        config = ChildConfig(
            file=str(file.path),
            database_url=self.database.url,
            redis_url=self.options.redis_url,
            key_prefix=self.key_prefix,
            method=method,
            batch_size=self.options.batch_size,
            cache_batch_size=self.options.cache_batch_size,
        )
        result = await run_child(config, file, label, progress, self.workdir)
        run = ImportRun.from_child(result, file.rows, await self.database.counts())
        if run.problem is not None:
            raise BenchError(f"{label}: {run.problem}")
        return run


async def run_import_bench(
    options: ImportBenchOptions, progress: StepProgress = no_progress
) -> ImportBenchReport:
    """Generate, import `runs` times per method, compare the cache step, check RSS; clean up."""
    options.check()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    runs: dict[str, list[ImportRun]] = {method: [] for method in options.methods}
    comparisons: list[CacheComparison] = []
    rss_csv: GeneratedCsv | None = None
    rss_run: ImportRun | None = None
    with tempfile.TemporaryDirectory(prefix="postal-bench-import-") as directory:
        workdir = Path(directory)
        progress("preparing the database", 0, 1, "")
        async with bench_database(options.database_url) as database:
            state = ImportBench(options, database, workdir)
            cache = CacheClient.create(
                read_url=options.redis_url, profile=MEASURING_PROFILE, key_prefix=state.key_prefix
            )
            try:
                await cache.start()
                csv = state.generate(options.rows, progress)
                for run in range(1, options.runs + 1):
                    for method in options.methods:
                        label = f"{method} · run {run}/{options.runs}"
                        runs[method].append(await state.import_once(csv, method, label, progress))
                        if method == options.methods[0]:
                            ids = await database.post_ids()
                            comparisons.append(
                                await measure_cache_step(
                                    cache, ids, options.cache_batch_size, label, progress
                                )
                            )
                csv.path.unlink()
                if options.rss_rows is not None:
                    rss_csv = state.generate(options.rss_rows, progress)
                    method = options.methods[0]
                    label = f"{method} · {options.rss_rows:,} rows (RSS check)"
                    rss_run = await state.import_once(rss_csv, method, label, progress)
                    rss_csv.path.unlink()
            finally:
                await cache.aclose()
                await delete_prefix(options.redis_url, state.key_prefix)
    return ImportBenchReport(
        settings=options.to_json() | {"key_prefix": state.key_prefix},
        started_at=started_at,
        database=mask_url(database.url),
        scratch_database=database.scratch,
        csv=csv,
        methods=[MethodSummary(method, method_runs) for method, method_runs in runs.items()],
        cache=comparisons,
        rss_csv=rss_csv,
        rss_run=rss_run,
    )
