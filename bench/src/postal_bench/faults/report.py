"""One row per fault: what the readers and the writer saw, the targets, the table and the JSON.

Targets (a row that misses one fails, and `postal bench faults` exits 1):

- failed reads 0: no read failed while the database was up (a hung read, past the hang bound,
  counts as failed). With the database down, a read may also get a clear 503 (JSON error body
  and Retry-After), and only while the fault overlaps it: sent before the end, answered after
  the beginning;
- stale reads 0 (for a fault with a documented bound, `Fault.stale_bound`: 0 older than the
  bound, those within it counted apart), wrong replies 0, failed writes 0 (writes too, while the
  database is up);
- the fault really happened (its evidence, see `scenarios`), and a fault that ends recovered
  before the load did.

Recovery: the time from the fault's end to the end of the first metrics window (one scrape
interval, 0.1 s) after it in which Postal's cache hit ratio is back to at least half its ratio
before the fault and no read sent in that window failed. The hit ratio is the one `postal stats`
and the dashboard show: reads answered from a worker's memory (the near cache) or by a Redis GET
hit, over those and all Redis GETs of the read role. "-" for faults that have no end (faulted
the whole run).
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.table import Table

from postal.observability.metrics import CACHE_OPERATIONS, NEAR_CACHE_READS
from postal.stats.scrape import Scrape
from postal_bench.faults.fault import Evidence
from postal_bench.faults.load import Outcome, ReadLog, StaleRead, WriteLog
from postal_bench.stats import percentile, show_count, show_ms

RECOVERED_SHARE = 0.5  # of the hit ratio before the fault: back to at least this share


@dataclass(frozen=True, slots=True)
class Marks:
    """When things happened (perf_counter seconds): None where a fault has no such moment."""

    started: float  # the load started
    began: float | None  # begin() was called
    ended: float | None  # the fault was over (end() returned; an instant fault: begin() did)
    during_until: float | None  # the "during" phase ended
    stopped: float  # the load was told to stop


@dataclass(slots=True)
class FaultResult:
    name: str
    summary: str
    shape: str
    database: bool  # the database is what fails
    reads: int
    failed: int  # failed while the database was up, hung ones included
    hung: int
    unavailable: int  # clear 503s while the database was down (allowed)
    stale: int  # every stale read, within the fault's bound or not
    wrong: int
    writes: int
    writes_failed: int  # failed while the database was up
    p99_before: float | None  # seconds
    p99_during: float | None
    p99_after: float | None
    recovery: float | None  # seconds; None: no end, or never recovered (see `recovered`)
    recovered: bool | None  # None: the fault has no end
    evidence: Evidence
    missing: str | None  # why the evidence does not show the fault; None when it does
    load_cpu: float  # CPU seconds of this (load-generating) process per second of the run
    stale_bound: float | None = None  # seconds; None: no stale read is allowed
    stale_past_bound: int = 0  # older than the bound (all of them without one)
    stale_outside_fault: int = 0  # within the bound, but sent before the fault or after it
    stale_oldest: float | None = None  # seconds: the oldest stale read's age (see `StaleRead`)
    # Seconds from the start of the measured load (after the warm-up): began, ended, stopped.
    timeline: dict[str, float | None] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    postal_log: list[str] = field(default_factory=list)  # Postal's warnings (`log_excerpt`)
    postal_log_lines: int = 0
    writer_log: list[str] = field(default_factory=list)  # the writer's Postal's, if any
    writer_log_lines: int = 0

    def problems(self) -> list[str]:
        """The targets this row misses, in words; empty when it meets them all."""
        found = []
        stale = "stale reads"
        if self.stale_bound is not None:
            stale = f"stale reads past the {self.stale_bound:g} s bound"
        for count, what in (
            (self.failed, "failed reads"),
            (self.stale_past_bound, stale),
            (self.wrong, "wrong replies"),
            (self.writes_failed, "failed writes"),
        ):
            if count:
                found.append(f"{count} {what}")
        if self.missing:
            found.append(f"fault not seen: {self.missing}")
        if self.recovered is False:
            found.append("not recovered before the load ended")
        return found

    @property
    def stale_within_bound(self) -> int:
        return self.stale - self.stale_past_bound

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        document["stale_within_bound"] = self.stale_within_bound
        document["problems"] = self.problems()
        return document


def log_excerpt(lines: Sequence[str], limit: int) -> list[str]:
    """At most `limit` of a server's log `lines`, in their order: the first line of each logger
    first, so that a rare warning is not hidden behind the many a fault makes expected (a
    tracking reconnect every 0.25 s), then the earliest of the rest."""
    first_of: dict[str, int] = {}
    for index, line in enumerate(lines):
        first_of.setdefault(_logger_of(line), index)
    chosen = set(sorted(first_of.values())[:limit])
    for index in range(len(lines)):
        if len(chosen) >= limit:
            break
        chosen.add(index)
    return [lines[index] for index in sorted(chosen)]


def _logger_of(line: str) -> str:
    """The logger of a JSON log line; "" for a line that is not one (a traceback's)."""
    try:
        record = json.loads(line)
    except ValueError:
        return ""
    logger = record.get("logger") if isinstance(record, dict) else None
    return logger if isinstance(logger, str) else ""


def _overlaps(sent: float, ended: float, window: tuple[float, float] | None) -> bool:
    return window is not None and sent < window[1] and ended > window[0]


def count_failures(
    reads: ReadLog, database_window: tuple[float, float] | None
) -> tuple[int, int, int]:
    """(failed, hung, allowed 503s): a clear 503 is allowed only while `database_window`
    (the database down) overlaps the read."""
    failed = hung = unavailable = 0
    for sent, latency, outcome in zip(reads.sent, reads.latency, reads.outcome, strict=True):
        if outcome is Outcome.OK or outcome is Outcome.WRONG:
            continue
        if outcome is Outcome.UNAVAILABLE and _overlaps(sent, sent + latency, database_window):
            unavailable += 1
            continue
        failed += 1
        hung += outcome is Outcome.HUNG
    return failed, hung, unavailable


def count_failed_writes(writes: WriteLog, database_window: tuple[float, float] | None) -> int:
    return sum(
        not _overlaps(sent, ended, database_window)
        for sent, ended in zip(writes.failed_sent, writes.failed_ended, strict=True)
    )


def phase_p99(reads: ReadLog, start: float, stop: float) -> float | None:
    latencies = [
        latency
        for sent, latency in zip(reads.sent, reads.latency, strict=True)
        if start <= sent < stop
    ]
    return percentile(latencies, 99) if latencies else None


def _read_gets(scrape: Scrape, outcome: str | None = None) -> float:
    match = {"role": "read", "command": "GET"} | ({"outcome": outcome} if outcome else {})
    return scrape.total(CACHE_OPERATIONS, **match)


def _near_hits(scrape: Scrape) -> float:
    return scrape.total(NEAR_CACHE_READS, outcome="hit")


def hit_ratio(first: Scrape, last: Scrape) -> float | None:
    """Cache hits over cache reads between two scrapes, as `postal stats` counts them: a read
    the near cache answered is a hit that sent no GET."""
    near_hits = _near_hits(last) - _near_hits(first)
    reads = _read_gets(last) - _read_gets(first) + near_hits
    if reads <= 0:
        return None
    return (_read_gets(last, "hit") - _read_gets(first, "hit") + near_hits) / reads


def recovery_time(
    scrapes: Sequence[Scrape], reads: ReadLog, baseline: float | None, ended: float
) -> float | None:
    """Seconds from `ended` to the end of the first window after it with the hit ratio back to
    RECOVERED_SHARE of `baseline` and no failed read sent in it; None if none such."""
    if not baseline:
        return None
    failures = sorted(
        sent for sent, outcome in zip(reads.sent, reads.outcome, strict=True) if outcome != 0
    )
    after = [scrape for scrape in scrapes if scrape.at >= ended]
    for first, last in itertools.pairwise(after):
        ratio = hit_ratio(first, last)
        if ratio is None or ratio < RECOVERED_SHARE * baseline:
            continue
        if bisect.bisect_left(failures, last.at) > bisect.bisect_left(failures, first.at):
            continue  # a read sent in this window failed
        return last.at - ended
    return None


def within_bound(read: StaleRead, bound: float | None) -> bool:
    """Whether a fault's stale bound allows this stale read: no older than the bound. Without
    a bound, none is."""
    return bound is not None and read.age <= bound


def during_fault(read: StaleRead, bound: float, marks: Marks) -> bool:
    """Whether a stale read was sent while the fault can explain it: from its beginning to
    `bound` after its end."""
    if marks.began is None or marks.ended is None:
        return False
    return marks.began <= read.sent <= marks.ended + bound


def describe_stale(read: StaleRead, started: float) -> str:
    """One stale read in words; times in seconds from the start of the measured load."""
    return (
        f"post {read.post}: a read sent at +{read.sent - started:.3f}s got version {read.seen};"
        f" version {read.expected} had returned to the writer at"
        f" +{read.acknowledged - started:.3f}s ({read.age:.3f}s after version {read.seen} was"
        " replaced)"
    )


@dataclass(slots=True)
class FaultReport:
    """The whole matrix: its settings and one row per fault run."""

    settings: dict[str, object]
    rows: list[FaultResult]
    wall_seconds: float = 0.0
    taken_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(not row.problems() for row in self.rows)

    def to_json(self) -> dict[str, object]:
        return {
            "benchmark": "postal bench faults",
            "taken_at": self.taken_at,
            "settings": self.settings,
            "wall_seconds": round(self.wall_seconds, 1),
            "passed": self.passed,
            "rows": [row.to_json() for row in self.rows],
        }


# Short headers, so that the table fits 120 columns; the legend under it says what each means.
COLUMNS = (
    "fault", "reads", "failed", "stale", "stale\nin bound", "wrong", "503", "writes\nfailed",
    "p99 ms\nbefore", "p99 ms\nduring", "p99 ms\nafter", "recovery\ns", "targets",
)  # fmt: skip


def _recovery(row: FaultResult) -> str:
    if row.recovered is None:
        return "-"
    return f"{row.recovery:.1f}" if row.recovery is not None else "never"


def render_report(report: FaultReport, console: Console) -> None:
    table = Table(
        title="Postal under faults: 1 writer, many readers, over HTTP",
        box=box.SIMPLE,
        collapse_padding=True,
    )
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "fault" else "right", no_wrap=True)
    for row in report.rows:
        table.add_row(
            row.name,
            show_count(row.reads),
            show_count(row.failed),
            show_count(row.stale_past_bound),
            show_count(row.stale_within_bound) if row.stale_bound is not None else "-",
            show_count(row.wrong),
            show_count(row.unavailable) if row.database else "-",
            show_count(row.writes_failed),
            show_ms(row.p99_before),
            show_ms(row.p99_during),
            show_ms(row.p99_after),
            _recovery(row),
            "met" if not row.problems() else "MISSED",
        )
    console.print(table)
    say = console.print
    settings = report.settings
    say(
        f"{settings['readers']} readers, 1 writer, {settings['posts']} hot posts; phases"
        f" {settings['before']:g}s before, {settings['during']:g}s during,"
        f" {settings['after']:g}s after (whole-run faults: before + during, faulted);"
        f" wall time {report.wall_seconds:.0f}s",
        markup=False,
        highlight=False,
    )
    say(
        "failed: reads that failed while the database was up (hung ones included); stale: a"
        " version older than a write already acknowledged (where a row has a bound, past it);"
        ' stale in bound: those within the row\'s bound ("-": none allowed); wrong: another'
        " post's body, or none"
        " readable; 503: clear 503s while the database was down; p99: of the reads sent in the"
        " phase; recovery: from the fault's end to the first 0.1 s window with the cache hit"
        " ratio back to half its pre-fault value and no failed read. Targets: 0 failed, 0 stale,"
        " 0 wrong, 0 failed writes, the fault seen, recovered.",
        markup=False,
        highlight=False,
    )
    for row in report.rows:
        facts = ", ".join(f"{name} {value:g}" for name, value in row.evidence.items())
        cpu = f"load generator CPU {row.load_cpu:.0%} of a core"
        say(f"  {row.name}: {row.summary}; {facts}; {cpu}", markup=False, highlight=False)
        if row.stale_bound is not None:
            oldest = "" if row.stale_oldest is None else f"; the oldest {row.stale_oldest:.3f}s"
            outside = ""
            if row.stale_outside_fault:
                outside = f" ({row.stale_outside_fault:,} of them sent outside the fault)"
            say(
                f"    stale reads within {row.stale_bound:g}s of the write that replaced what"
                f" they got: {row.stale_within_bound:,}{outside}; past that:"
                f" {row.stale_past_bound:,}{oldest}",
                markup=False,
                highlight=False,
            )
        for problem in row.problems():
            say(f"    MISSED: {problem}", markup=False, highlight=False)
        if row.problems():
            for kind, example in row.examples.items():
                say(f"    {kind}: {example}", markup=False, highlight=False)
            for line in row.postal_log[:5]:
                say(f"    postal log | {line}", markup=False, highlight=False)
            for line in row.writer_log[:5]:
                say(f"    writer log | {line}", markup=False, highlight=False)
