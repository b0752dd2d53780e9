"""What `postal import` shows: the progress while it runs (stderr), the report at the end (stdout).

The progress is a rich bar on a terminal (rows read, rows/s, errors so far, and the ETA from the
bytes read out of the file's size), and one plain line every PLAIN_PROGRESS_INTERVAL seconds
otherwise, so that a log collecting stderr gets a line now and then instead of control codes.
The report is plain text (no wrapping, no markup), one error per line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from postal.imports.csv_rows import RowError
from postal.imports.importer import ImportProgress, ImportReport
from postal.settings import Settings

PLAIN_PROGRESS_INTERVAL = 2.0  # seconds between progress lines when stderr is not a terminal
MIN_RATE_WINDOW = 0.5  # seconds of importing before a rate is shown

ProgressFn = Callable[[ImportProgress], None]


class Rates:
    """Rows/s and the ETA, measured from the first update on (connecting and migrating do not
    count), once MIN_RATE_WINDOW has passed: a rate over a few milliseconds means nothing."""

    def __init__(self, total_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._total = total_bytes
        self._clock = clock
        self._start: tuple[float, int, int] | None = None  # time, rows, bytes

    def elapsed(self, update: ImportProgress) -> float:
        now = self._clock()
        if self._start is None:
            self._start = (now, update.rows_read, update.bytes_read)
        return now - self._start[0]

    def describe(self, update: ImportProgress) -> tuple[str, str]:
        """(rows/s, ETA) as shown; "-" until they mean something."""
        elapsed = self.elapsed(update)
        assert self._start is not None
        if elapsed < MIN_RATE_WINDOW:
            return "-", "-"
        _, rows, read = self._start
        rows_per_second = (update.rows_read - rows) / elapsed
        bytes_per_second = (update.bytes_read - read) / elapsed
        remaining = max(self._total - update.bytes_read, 0)
        eta = f"{remaining / bytes_per_second:.0f}s" if bytes_per_second > 0 else "-"
        return f"{rows_per_second:,.0f}", eta


@contextmanager
def progress_display(console: Console, total_bytes: int) -> Iterator[ProgressFn]:
    """The progress callback for `PostImporter.run`, shown on `console` while in the block."""
    rates = Rates(total_bytes)

    if not console.is_terminal:
        last = 0.0

        def plain(update: ImportProgress) -> None:
            nonlocal last
            elapsed = rates.elapsed(update)
            if elapsed - last < PLAIN_PROGRESS_INTERVAL:
                return
            last = elapsed
            rate, eta = rates.describe(update)
            done = update.bytes_read / total_bytes if total_bytes else 1.0
            typer.echo(
                f"importing: {done:.0%}, {update.rows_read:,} rows read, {rate} rows/s,"
                f" {update.errors:,} errors, ETA {eta}",
                err=True,
            )

        yield plain
        return

    columns = (
        TextColumn("importing"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("{task.fields[errors]:,} errors"),
        TextColumn("ETA"),
        TimeRemainingColumn(),  # from the bytes read of the file's size
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("import", total=total_bytes or 1, rows=0, rate="-", errors=0)

        def rich(update: ImportProgress) -> None:
            bar.update(
                task,
                completed=update.bytes_read,
                rows=update.rows_read,
                rate=rates.describe(update)[0],
                errors=update.errors,
            )

        yield rich


def describe_error(error: RowError) -> str:
    """`line N, column C: reason: message` (no column when the whole row is to blame)."""
    where = f"line {error.line}" + (f", column {error.column}" if error.column else "")
    return f"{where}: {error.reason}: {error.message}"


def report_lines(
    report: ImportReport, waited: float, settings: Settings, *, private_cache: bool
) -> list[str]:
    """The report as printed: counts, each reported error, the cache step."""
    lines = []
    if report.committed:
        lines.append(f"imported, in {report.seconds:.1f}s")
        lines.append(f"  rows read: {report.rows_read:,}")
        lines.append(f"  created: {report.created:,}")
        lines.append(f"  updated: {report.updated:,}")
        skipped = " (skipped: --skip-invalid)" if report.invalid else ""
        lines.append(f"  invalid: {report.invalid:,}{skipped}")
    else:
        lines.append("nothing was imported")
        lines.append(f"  rows read: {report.rows_read:,}")
        lines.append(f"  invalid: {report.invalid:,}")
    lines.extend(f"    {describe_error(error)}" for error in report.errors)
    unlisted = _unlisted_rows(report)
    if unlisted:
        lines.append(f"    ... and {unlisted:,} more")
    if not report.committed and report.rows_read:
        lines.append(
            "  nothing was written: fix these rows, or import the others with --skip-invalid"
        )
    if report.committed:
        lines.extend(_cache_lines(report, waited, settings, private_cache=private_cache))
    return lines


def _unlisted_rows(report: ImportReport) -> int:
    """Bad rows beyond the reporting limit. A row may have several errors, and `invalid`
    counts rows: the rows none of whose errors were listed."""
    listed_rows = {error.line for error in report.errors}
    return max(report.invalid - len(listed_rows), 0)


def _cache_lines(
    report: ImportReport, waited: float, settings: Settings, *, private_cache: bool
) -> list[str]:
    step = report.cache
    if step is None or private_cache:
        return ["  cache: none running (postal serve is not): nothing to invalidate"]
    warmed = f", {step.warmed:,} warmed" if step.warmed else ""
    lines = [
        f"  cache: {step.keys:,} keys invalidated in {step.pipelines:,} pipelines,"
        f" {step.seconds * 1000:.0f}ms{warmed}"
    ]
    if step.pending:
        expiry = max(settings.post_cache_ttl, settings.list_cache_ttl) * (
            1 + settings.cache_ttl_jitter
        )
        lines.append(
            f"  warning: the cache invalidation is still pending after {waited:.1f}s of"
            " retries (Redis did not take it): the running service may serve the previous"
            f" versions of these posts and list pages until they expire, within {expiry:.0f}s"
            " (POST_CACHE_TTL, LIST_CACHE_TTL)"
        )
    elif waited:
        lines.append(f"  cache: the invalidation was pending; it landed after {waited:.1f}s")
    return lines
