"""The closed-loop load driver every benchmark shares, and external load tools run with a
progress tick: each operation timed from the moment it is requested, warm-up included in the
load but not in the figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postal_bench.errors import BenchError

TICK = 0.1  # seconds between progress updates

Op = Callable[[int], Awaitable[object]]  # one operation on key number i
ProgressFn = Callable[[str, float, float], None]  # (what is running, elapsed s, planned s)


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
