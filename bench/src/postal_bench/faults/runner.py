"""Running the matrix: for each fault a rig, a Postal, a hot set, the load through three phases.

Per fault: create the hot set in the database, set the rig up, start Postal, read the hot set
once (the cache fills), then start the load, warm up for `WARM_UP` s, and:

- timed faults: `before` s healthy, `begin()`, `during` s, `end()`, `after` s;
- instant faults: `before` s, `begin()` (the fault is over when it returns), `during` s, `after` s;
- whole-run faults: `before` + `during` s, faulted from the start.

The after phase goes on past `after` s, up to RECOVERY_GRACE s more, while Postal has not
recovered yet (see `report`): a slow recovery is measured rather than cut off.

Then stop the load (replies in flight are awaited, each bounded by the hang bound), count, and
stop everything the fault started. The run's database is one scratch PostgreSQL database for
all faults (or the one the caller gives, already migrated); each fault makes its own hot set.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from postal.stats.scrape import Scrape
from postal_bench.errors import BenchError
from postal_bench.faults.fault import Fault, Observed, Shape, Window
from postal_bench.faults.load import (
    SCRAPE_INTERVAL,
    STALE_EXAMPLES,
    Load,
    Outcome,
    StaleRead,
    WriteLog,
    stale_reads,
)
from postal_bench.faults.report import (
    FaultReport,
    FaultResult,
    Marks,
    count_failed_writes,
    count_failures,
    describe_stale,
    during_fault,
    hit_ratio,
    log_excerpt,
    phase_p99,
    recovery_time,
    within_bound,
)
from postal_bench.faults.rig import FaultRig, create_hot_set
from postal_bench.imports.database import POSTGRES_SCHEME, bench_database
from postal_bench.load import ProgressFn
from postal_bench.loopback import require_loopback

HANG_BOUND = 10.0  # s: a request not answered by then is counted as hung, and given up on
# s of load before the phases: the pools grow to the load's size, the first fills land. Its reads
# are checked like all others, but count in no phase's p99 nor in the hit ratio before the fault.
WARM_UP = 1.0
# s the after phase may go on, at most, for a recovery not seen yet (then it is "never").
RECOVERY_GRACE = 10.0
LOG_EXCERPT = 20  # lines of Postal's log kept in a row


@dataclass(frozen=True, slots=True)
class FaultOptions:
    faults: tuple[type[Fault], ...]
    readers: int = 100
    rate: float = 500.0  # reads/s offered by all readers together; 0: each reader back to back
    posts: int = 200
    before: float = 3.0  # seconds
    during: float = 5.0
    after: float = 5.0
    hang_bound: float = HANG_BOUND
    database_url: str | None = None  # None: a scratch database on 127.0.0.1:5432

    def check(self) -> None:
        if not self.faults:
            raise BenchError("no fault to run")
        if self.readers < 1 or self.posts < 1:
            raise BenchError("--readers and --posts must be at least 1")
        if self.rate < 0:
            raise BenchError("--rate must be 0 (back to back) or above")
        if min(self.before, self.during, self.after) <= 0:
            raise BenchError("--before, --during and --after must be above 0")
        if self.hang_bound <= 0:
            raise BenchError("the hang bound must be above 0")
        if self.database_url is not None:
            require_loopback(self.database_url, schemes=(POSTGRES_SCHEME,))

    def planned(self, fault: type[Fault]) -> float:
        """Seconds of load for `fault`, the warm-up included."""
        if fault.shape is Shape.WHOLE_RUN:
            return WARM_UP + self.before + self.during
        return WARM_UP + self.before + self.during + self.after

    def settings(self) -> dict[str, object]:
        return {
            "faults": [fault.name for fault in self.faults],
            "readers": self.readers,
            "rate": self.rate,
            "posts": self.posts,
            "before": self.before,
            "during": self.during,
            "after": self.after,
            "hang_bound": self.hang_bound,
        }


@asynccontextmanager
async def _database(url: str | None) -> AsyncIterator[str]:
    if url is not None:
        yield url
        return
    async with bench_database(None) as database:
        yield database.url


async def run_faults(options: FaultOptions, progress: ProgressFn) -> FaultReport:
    """Every fault of `options`, one after the other; the report."""
    options.check()
    started = time.perf_counter()
    total = sum(options.planned(fault) for fault in options.faults)
    done = 0.0
    rows: list[FaultResult] = []
    with tempfile.TemporaryDirectory(prefix="postal-bench-faults-") as scratch:
        async with _database(options.database_url) as database_url:
            for number, fault in enumerate(options.faults, 1):
                label = f"{number}/{len(options.faults)} {fault.name}"

                def show(
                    phase: str, elapsed: float, label: str = label, base: float = done
                ) -> None:
                    progress(f"{label}: {phase}", base + elapsed, total)

                work_dir = Path(scratch) / fault.name
                work_dir.mkdir()
                rows.append(await run_fault(fault(), database_url, options, work_dir, show))
                done += options.planned(fault)
    return FaultReport(options.settings(), rows, time.perf_counter() - started)


async def _until_recovered(
    load: Load, baseline: float | None, ended: float, show: Callable[[str], None]
) -> None:
    """Go on with the load past the after phase, up to RECOVERY_GRACE s, until the recovery
    (see `report`) has happened: a slow recovery is then measured, not cut off."""
    started = time.perf_counter()
    while recovery_time(load.scrapes, load.reads, baseline, ended) is None:
        waited = time.perf_counter() - started
        if baseline is None or waited >= RECOVERY_GRACE:
            return
        show(f"after (waiting for the recovery, {waited:.1f}s)")
        await asyncio.sleep(SCRAPE_INTERVAL)


async def _phase(
    seconds: float, name: str, offset: float, show: Callable[[str, float], None]
) -> None:
    """Sleep `seconds`, showing progress at `offset` + elapsed every 0.1 s."""
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        show(name, offset + elapsed)
        await asyncio.sleep(min(0.1, seconds - elapsed))


@dataclass(frozen=True, slots=True)
class Timeline:
    """The moments of one fault's load (see `Marks`), and the scrapes taken at them."""

    marks: Marks
    at_begin: Scrape  # whole run: the scrape before the load started
    at_during_end: Scrape
    at_end: Scrape | None  # None: the fault has no end


async def run_fault(
    fault: Fault,
    database_url: str,
    options: FaultOptions,
    work_dir: Path,
    show: Callable[[str, float], None],
) -> FaultResult:
    """One row of the matrix (see the module docstring)."""
    async with FaultRig(work_dir, database_url) as rig:
        show("setting up", 0.0)
        await fault.set_up(rig)
        postal = await rig.start_postal()
        post_ids = await create_hot_set(database_url, options.posts)
        await postal.read_all(post_ids)
        load = Load(
            postal,
            post_ids,
            readers=options.readers,
            rate=options.rate,
            hang_bound=options.hang_bound,
            writer=rig.writer,
        )
        log_from = postal.server.log_position()
        writer_server = None if rig.writer is None else rig.writer.server
        writer_from = 0 if writer_server is None else writer_server.log_position()
        cpu_started, load_started = time.process_time(), time.perf_counter()
        load.start()
        try:
            await _phase(WARM_UP, "warming up", 0.0, show)
            first = await load.mark()

            def shifted(phase: str, elapsed: float) -> None:
                show(phase, WARM_UP + elapsed)

            timeline = await _phases(fault, options, load, first, shifted)
            show("stopping", options.planned(type(fault)))
            await load.stop()
        except BaseException:
            await load.cancel()
            raise
        marks = timeline.marks
        load_cpu = (time.process_time() - cpu_started) / (time.perf_counter() - load_started)
        last = load.scrapes[-1]
        database_window = None
        if fault.database and marks.began is not None and marks.ended is not None:
            database_window = (marks.began, marks.ended)
        failed_writes = count_failed_writes(load.writes, database_window)
        observed = Observed(
            during=Window(timeline.at_begin, timeline.at_during_end),
            after=Window(timeline.at_end or last, last),
            failed_writes_during=len(load.writes.failed_sent) - failed_writes,
            accepted_writes_during=_accepted_between(load.writes, marks.began, marks.ended),
        )
        evidence = await fault.evidence(observed)
        failed, hung, unavailable = count_failures(load.reads, database_window)
        stale = stale_reads(load.reads, load.writes)
        bound = fault.stale_bound
        past_bound = [read for read in stale if not within_bound(read, bound)]
        outside = 0
        if bound is not None:
            outside = sum(
                within_bound(read, bound) and not during_fault(read, bound, marks) for read in stale
            )
        baseline = hit_ratio(first, timeline.at_begin) if marks.began is not None else None
        recovery = None
        if marks.ended is not None:
            recovery = recovery_time(load.scrapes, load.reads, baseline, marks.ended)
        examples = {kind.name.lower(): text for kind, text in load.reads.examples.items()}
        for number, read in enumerate(_stale_examples(stale, past_bound), 1):
            examples[f"stale {number}"] = describe_stale(read, marks.started)
        if load.writes.first_failure is not None:
            examples["write"] = load.writes.first_failure
        if load.scrape_errors:
            examples["scrape"] = f"{len(load.scrape_errors)} lost, first: {load.scrape_errors[0]}"
        log = postal.server.log_since(log_from)
        writer_log = [] if writer_server is None else writer_server.log_since(writer_from)
        during_from = marks.began if marks.began is not None else marks.started
        during_until = marks.during_until if marks.during_until is not None else marks.stopped
        return FaultResult(
            name=fault.name,
            summary=fault.summary,
            shape=fault.shape.value,
            database=fault.database,
            reads=len(load.reads),
            failed=failed,
            hung=hung,
            unavailable=unavailable,
            stale=len(stale),
            wrong=load.reads.outcome.count(Outcome.WRONG),
            writes=load.writes.accepted + len(load.writes.failed_sent),
            writes_failed=failed_writes,
            p99_before=(phase_p99(load.reads, marks.started, marks.began) if marks.began else None),
            p99_during=phase_p99(load.reads, during_from, during_until),
            p99_after=(
                phase_p99(load.reads, during_until, marks.stopped)
                if marks.during_until is not None
                else None
            ),
            recovery=recovery,
            recovered=None if marks.ended is None else recovery is not None,
            evidence=evidence,
            missing=fault.missing(evidence),
            load_cpu=load_cpu,
            stale_bound=bound,
            stale_past_bound=len(past_bound),
            stale_outside_fault=outside,
            stale_oldest=max((read.age for read in stale), default=None),
            timeline=_relative(marks),
            examples=examples,
            postal_log=log_excerpt(log, LOG_EXCERPT),
            postal_log_lines=len(log),
            writer_log=log_excerpt(writer_log, LOG_EXCERPT),
            writer_log_lines=len(writer_log),
        )


def _accepted_between(writes: WriteLog, began: float | None, ended: float | None) -> int:
    """Writes that returned while the fault was on (none for a fault that has no such span)."""
    if began is None or ended is None:
        return 0
    return sum(began <= at < ended for times in writes.returned.values() for at in times)


def _stale_examples(stale: list[StaleRead], past_bound: list[StaleRead]) -> list[StaleRead]:
    """The stale reads a row describes: the first past the bound, else the oldest within it."""
    if past_bound:
        return past_bound[:STALE_EXAMPLES]
    return sorted(stale, key=lambda read: read.age, reverse=True)[:STALE_EXAMPLES]


def _relative(marks: Marks) -> dict[str, float | None]:
    def since(moment: float | None) -> float | None:
        return None if moment is None else round(moment - marks.started, 3)

    return {
        "began": since(marks.began),
        "ended": since(marks.ended),
        "during_until": since(marks.during_until),
        "stopped": since(marks.stopped),
    }


async def _phases(
    fault: Fault,
    options: FaultOptions,
    load: Load,
    first: Scrape,
    show: Callable[[str, float], None],
) -> Timeline:
    """Run the load through the fault's phases (see the module docstring)."""
    started = time.perf_counter()
    shape = fault.shape
    if shape is Shape.WHOLE_RUN:
        await _phase(options.before + options.during, "faulted", 0.0, show)
        stopped = time.perf_counter()
        marks = Marks(started, None, None, None, stopped)
        return Timeline(marks, first, await load.mark(), None)
    await _phase(options.before, "before", 0.0, show)
    at_begin = await load.mark()
    began = time.perf_counter()
    await fault.begin()
    if shape is Shape.INSTANT:
        ended = time.perf_counter()
        at_end = await load.mark()
    await _phase(options.during - (time.perf_counter() - began), "during", options.before, show)
    if shape is Shape.TIMED:
        await fault.end()
        ended = time.perf_counter()
        at_end = await load.mark()
    during_until = time.perf_counter()
    at_during_end = at_end if shape is Shape.TIMED else await load.mark()
    await _phase(options.after, "after", options.before + options.during, show)
    planned = options.before + options.during + options.after
    await _until_recovered(
        load, hit_ratio(first, at_begin), ended, lambda label: show(label, planned)
    )
    stopped = time.perf_counter()
    marks = Marks(started, began, ended, during_until, stopped)
    return Timeline(marks, at_begin, at_during_end, at_end)
