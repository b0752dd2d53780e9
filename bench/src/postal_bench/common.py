"""Benchmarks: commands that print a table (and write JSON), not tests.

This package's own module holds what every load generator shares: the loopback guard (load goes to
this machine only), a closed-loop load driver that times each operation from the moment it is
requested, keys of its own under a unique prefix (written before, deleted after), a rich progress
line, and the table and JSON output. `redis_topologies` holds plain redis-py on whatever Redis
topology a URL names, and the Redis Cluster a bench starts to compare with one server; `stats`
is the pure arithmetic; `cache` is `postal bench cache`. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from postal.bench.stats import COLUMNS, ProfileSummary, table_rows
from postal.cache.urls import mask_url

TICK = 0.1  # seconds between progress updates

logger = logging.getLogger("postal.bench")

Op = Callable[[int], Awaitable[object]]  # one operation on key number i
ProgressFn = Callable[[str, float, float], None]  # (what is running, elapsed s, planned s)


class BenchError(Exception):
    """The benchmark cannot run: bad options, a target that cannot be prepared, a failed tool."""


class NotLoopback(BenchError):
    """The URL points somewhere other than this machine; a load generator refuses it."""


def is_loopback_host(host: str) -> bool:
    """Whether `host` is this machine: `localhost`, or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve anywhere
        return False


def require_loopback(url: str, schemes: Sequence[str] = ("redis", "rediss")) -> None:
    """Raise NotLoopback unless `url` has one of `schemes` and a loopback host."""
    refusal = (
        f"refusing to send load to {mask_url(url)}: benchmarks only target loopback"
        f" ({'/'.join(schemes)} URLs on 127.0.0.0/8, ::1 or localhost)"
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise NotLoopback(refusal) from None
    if parts.scheme not in schemes or not host or not is_loopback_host(host):
        raise NotLoopback(refusal)


def no_progress(label: str, elapsed: float, planned: float) -> None:
    return None


@dataclass(slots=True)
class Tally:
    """What one run saw: every operation's latency (failed ones included) and the errors."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


async def _worker(
    op: Op, index: int, count: int, measure_from: float, stop_at: float, tally: Tally
) -> None:
    perf = time.perf_counter
    while (began := perf()) < stop_at:
        error: str | None = None
        try:
            await op(index)
        except Exception as exc:  # count, don't crash: a failing profile is a result
            error = f"{type(exc).__name__}: {exc}"
        ended = perf()
        # Every operation that ends in the measured window counts, timed from its request, even
        # one requested during the warm-up: a caller starved by an unfair pool since the warm-up
        # must show, not vanish from the tail.
        if ended >= measure_from:
            tally.latencies.append(ended - began)
            if error is not None:
                tally.errors += 1
                tally.first_error = tally.first_error or error
        index = (index + 1) % count


async def run_load(
    op: Op,
    *,
    concurrency: int,
    keys: int,
    warmup: float,
    seconds: float,
    tally: Tally,
    tick: Callable[[float], None],
    on_measure: Callable[[], None] = lambda: None,
) -> float:
    """`concurrency` tasks call `op` back to back, each walking the `keys` from its own offset.

    The load runs without a break: `warmup` seconds, then `seconds` in which operations are
    started; every operation that ends after the warm-up is recorded in `tally`, timed from its
    request (those still in flight at the end are awaited). `on_measure` is
    called when recording starts; `tick` with the elapsed time, every TICK. Returns the recorded
    span: from the start of recording to the last reply.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    if warmup > 0:
        recording = loop.call_later(warmup, on_measure)
    else:
        on_measure()
        recording = None
    workers = [
        asyncio.create_task(
            _worker(op, task * keys // concurrency, keys, measure_from, stop_at, tally)
        )
        for task in range(concurrency)
    ]
    everything = asyncio.gather(*workers)
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=TICK)
            tick(time.perf_counter() - started)
    except BaseException:
        everything.cancel()
        await asyncio.wait([everything])
        raise
    finally:
        if recording is not None:
            recording.cancel()  # a no-op once it has run
    everything.result()
    return time.perf_counter() - measure_from


async def run_tool(args: Sequence[str], limit: float, tick: Callable[[float], None]) -> str:
    """Run an external load tool, ticking while it runs; its stdout. Killed after `limit` s."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    output = asyncio.ensure_future(process.communicate())
    try:
        async with asyncio.timeout(limit):
            while not output.done():
                await asyncio.wait([output], timeout=TICK)
                tick(time.perf_counter() - started)
    except BaseException:
        process.kill()
        await asyncio.wait([output])
        raise
    stdout, stderr = output.result()
    if process.returncode != 0:
        tool = Path(args[0]).name
        raise BenchError(f"{tool} exited with {process.returncode}: {stderr.decode().strip()}")
    return stdout.decode(errors="replace")


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
