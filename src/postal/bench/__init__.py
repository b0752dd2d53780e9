"""Benchmarks: commands that print a table (and write JSON), not tests.

This package's own module holds what every load generator shares: the loopback guard (load goes to
this machine only), a closed-loop load driver that times each operation from the moment it is
requested, keys of its own under a unique prefix (written before, deleted after), a rich progress
line, and the table and JSON output. `stats` is the pure arithmetic; `cache` is `postal bench
cache`. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as redis
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from postal.bench.stats import COLUMNS, ProfileSummary, table_rows
from postal.cache.urls import mask_url

TICK = 0.1  # seconds between progress updates
KEY_TTL_MS = 3_600_000  # 1 h: a bench's keys expire even if its clean-up never runs

logger = logging.getLogger("postal.bench")

Op = Callable[[int], Awaitable[object]]  # one operation on key number i
ProgressFn = Callable[[str, float, float], None]  # (what is running, elapsed s, planned s)


class BenchError(Exception):
    """The benchmark cannot run: bad options, a target that cannot be prepared, a failed tool."""


class NotLoopback(BenchError):
    """The URL points somewhere other than this machine; a load generator refuses it."""


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
    if parts.scheme not in schemes or not host:
        raise NotLoopback(refusal)
    if host.lower() == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(refusal) from None
    if not address.is_loopback:
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


async def populate_keys(url: str, keys: Sequence[str], value_size: int) -> None:
    """Write `keys`, each a random value of `value_size` bytes expiring after 1 h, in one batch."""
    client = redis.Redis.from_url(url)
    value = os.urandom(value_size)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, value, px=KEY_TTL_MS)
            await pipe.execute()
    except Exception as exc:  # whatever redis-py raises, the bench cannot start
        raise BenchError(f"cannot prepare keys on {mask_url(url)}: {exc}") from exc
    finally:
        await client.aclose()


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix`; the number deleted. Logs, never raises, on failure."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    except Exception as exc:
        logger.warning("bench: could not delete keys under %s: %s", prefix, exc)
    finally:
        await client.aclose()
    return deleted


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
