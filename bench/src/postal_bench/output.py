"""What a benchmark shows: a rich progress line, its tables, and its JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from postal_bench.load import ProgressFn
from postal_bench.stats import COLUMNS, ProfileSummary, table_rows


@contextmanager
def rich_progress(console: Console) -> Iterator[ProgressFn]:
    """A one-line progress display (what runs, its bar, its elapsed time, the total elapsed)."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=1.0, step="")

        def show(label: str, elapsed: float, planned: float) -> None:
            progress.update(
                task,
                description=label,
                completed=min(elapsed, planned),
                total=planned,
                step=f"{elapsed:4.1f}s/{planned:.1f}s",
            )

        yield show


def render_table(
    console: Console,
    title: str,
    summaries: Sequence[ProfileSummary],
    descriptions: dict[str, str],
    caption: str,
) -> None:
    """The summaries as a table in `COLUMNS` order, the caption, one legend line per profile."""
    table = Table(title=title)
    for column in COLUMNS:
        if column == "profile":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in table_rows(summaries):
        table.add_row(*row)
    console.print(table)
    console.print(caption, markup=False, highlight=False)
    for summary in summaries:
        note = f" ({summary.note})" if summary.note else ""
        line = f"  {summary.name}: {descriptions.get(summary.name, '')}{note}"
        console.print(line, markup=False, highlight=False)
        first_error = next((run.first_error for run in summary.runs if run.first_error), None)
        if first_error:
            console.print(f"    first error: {first_error}", markup=False, highlight=False)


def print_grouped_table(
    console: Console,
    title: str,
    columns: Sequence[str],
    groups: Sequence[Sequence[tuple[str, ...]]],
    *,
    left: int = 2,
) -> None:
    """A table whose rows come in groups, a line between two groups; the first `left` columns
    (names) aligned left, the figures right."""
    table = Table(title=title, collapse_padding=True)  # one space between columns: it is wide
    for position, column in enumerate(columns):
        table.add_column(column, justify="left" if position < left else "right", no_wrap=True)
    for position, rows in enumerate(groups):
        if position > 0:
            table.add_section()
        for row in rows:
            table.add_row(*row)
    console.print(table)


def write_json(path: Path, document: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


class Report(Protocol):
    def to_json(self) -> dict[str, object]: ...


R = TypeVar("R", bound=Report)


def bench_console() -> Console:
    """The console a benchmark prints to; piped output is not squeezed to a narrow width."""
    return Console(width=None if sys.stdout.isatty() else 120)


def publish(
    report: R, render: Callable[[R, Console], None], console: Console, json_path: Path | None
) -> None:
    """Print a benchmark's tables, and write its JSON when asked to."""
    render(report, console)
    if json_path is not None:
        write_json(json_path, report.to_json())
        console.print(f"JSON written to {json_path}", markup=False, highlight=False)
