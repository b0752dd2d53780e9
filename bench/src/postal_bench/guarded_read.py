"""What the early refresh costs a cache hit: a micro-benchmark of the read path's hot path.

    python -m postal_bench.guarded_read [--url redis://127.0.0.1:6379/0] [--reads 2000] [--runs 50]

Each row is timed per call over `--runs` runs, its two sides interleaved run by run; the table
shows each side's best run (as `timeit` does: on a shared machine noise only adds time, so the
best run is the least disturbed) and its median, and what the change added to the best:

- `parse`: `read_guarded` on a 1 KB value stamped without the expiry (the format before it) and
  with it: the whole cost the stamp adds to every Redis hit. In process, no I/O.
- `check alone`: `EarlyRefresher.consider` on a hit far from its expiry, next to a call that does
  nothing: the work the early refresh adds to every hit, in process, no I/O.
- `memory hit`: `ReadThrough.get` answered by the near cache (tracking live on the Redis given),
  early refresh off, then on, far from the expiry: the check every hit pays (a clock read and
  a comparison).
- `memory hit, last seconds`: the same, on, with the entry 1 s from its expiry (within the
  horizon, not due: a draw and a logarithm). Only the last `40 * beta * delta` seconds of an
  entry's life (4 s by default) pay this.
- `redis hit`: `ReadThrough.get` answered by Redis (one MGET on loopback), off and on: what a
  round trip weighs next to the check.

The Redis must be on loopback; the bench's keys (under a prefix of its own) are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from postal.cache import (
    CacheClient,
    EarlyRefreshConfig,
    EarlyRefresher,
    Guarded,
    GuardedKey,
    Loader,
    NearCache,
    ReadThrough,
    guarded,
)
from postal.cache.policy.guard import now_ms, read_guarded, stamp
from postal_bench.errors import FAILURES, BenchError
from postal_bench.loopback import require_loopback

DEFAULT_URL = "redis://127.0.0.1:6379/0"
PAYLOAD = b"x" * 1024
KEY = guarded("bench", "1")
TTL = 600.0  # seconds: far from the expiry for the whole bench
TRACKING_READY = 5.0  # seconds to wait for the near cache's tracking to be confirmed


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a row: ns per call, in each run."""

    runs: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass(frozen=True, slots=True)
class Row:
    measure: str
    sides: str  # what the left and the right side are
    before: Side
    after: Side

    @property
    def added_ns(self) -> float:
        return self.after.best - self.before.best


async def per_call_ns(call: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        await call()
    return (time.perf_counter_ns() - started) / calls


def parse_ns(value: bytes, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        read_guarded(value, b"0")
    return (time.perf_counter_ns() - started) / calls


def check_ns(check: Callable[[GuardedKey, Guarded, Loader], None], calls: int) -> float:
    found = Guarded(PAYLOAD, 90_001, time.time() + TTL)
    started = time.perf_counter_ns()
    for _ in range(calls):
        check(KEY, found, never_loaded)
    return (time.perf_counter_ns() - started) / calls


async def never_loaded() -> tuple[bytes, float]:
    raise AssertionError("every read here is a hit")


class NoFills:
    """The cache of a refresher that must never fill (the bench's hits are far from expiry)."""

    async def fill_guarded(
        self, key: GuardedKey, generation: int, payload: bytes, *, ttl: float
    ) -> bool:
        raise AssertionError("no refresh is due in the bench")


def no_check(key: GuardedKey, found: Guarded, load: Loader) -> None:
    """What a hit does in the check's place when early refresh is off: nothing."""


async def compare(
    runs: int,
    before: Callable[[], Awaitable[float]],
    after: Callable[[], Awaitable[float]],
) -> tuple[Side, Side]:
    """`runs` interleaved runs of each side (ns per call), each side first every other run (the
    second run of a pair finds the caches the first warmed)."""
    lefts, rights = [], []
    for run_number in range(runs):
        if run_number % 2:
            rights.append(await after())
            lefts.append(await before())
        else:
            lefts.append(await before())
            rights.append(await after())
    return Side(tuple(lefts)), Side(tuple(rights))


async def run(url: str, reads: int, runs: int, prefix: str | None = None) -> list[Row]:
    """The rows; the bench's key lives under `prefix` (default: one of its own)."""
    require_loopback(url)
    rows: list[Row] = []
    old, new = stamp(0, PAYLOAD), stamp(0, PAYLOAD, now_ms() + round(TTL * 1000))
    if not read_guarded(old, b"0").payload == read_guarded(new, b"0").payload == PAYLOAD:
        raise BenchError("a stamped value did not read back as a hit")

    async def parse(value: bytes) -> float:
        return parse_ns(value, reads * 10)

    left, right = await compare(runs, lambda: parse(old), lambda: parse(new))
    rows.append(Row("parse", "no expiry / expiry", left, right))
    refresher = EarlyRefresher(NoFills(), EarlyRefreshConfig())

    async def check(consider: Callable[[GuardedKey, Guarded, Loader], None]) -> float:
        return check_ns(consider, reads * 10)

    left, right = await compare(runs, lambda: check(no_check), lambda: check(refresher.consider))
    rows.append(Row("check alone", "none / far", left, right))

    prefix = prefix or f"postal-bench:{uuid.uuid4().hex[:12]}:"
    cache = CacheClient.create(read_url=url, key_prefix=prefix)
    async with cache:
        try:
            rows += await through_the_read_path(cache, reads, runs)
        finally:
            await cache.delete(KEY.key, KEY.generation_key)
    return rows


async def through_the_read_path(cache: CacheClient, reads: int, runs: int) -> list[Row]:
    generation = (await cache.get_guarded(KEY)).generation  # a miss: it opens the counter
    if not await cache.fill_guarded(KEY, generation, PAYLOAD, ttl=TTL):
        raise BenchError("the bench's key could not be filled")
    near = NearCache(key_prefix=cache.key(""), max_bytes=1 << 20, ttl=TTL)
    near.tracking = cache.tracking(near)
    if near.tracking is None:
        raise BenchError("the near cache needs one Redis server, not a cluster")
    near.tracking.start()
    try:
        deadline = time.monotonic() + TRACKING_READY
        while not near.usable():
            if time.monotonic() > deadline:
                raise BenchError("tracking was not confirmed: is CLIENT TRACKING allowed?")
            await asyncio.sleep(0.01)
        return await measure_hits(cache, near, reads, runs)
    finally:
        await near.tracking.aclose()


async def measure_hits(cache: CacheClient, near: NearCache, reads: int, runs: int) -> list[Row]:
    never = never_loaded
    on = EarlyRefreshConfig()
    expires_at = (await cache.get_guarded(KEY)).expires_at
    if expires_at is None:
        raise BenchError("the bench's key was read back without its expiry")
    in_memory_off = ReadThrough(cache, near=near)
    in_memory_on = ReadThrough(cache, near=near, early_refresh=on)
    # 1 s before the expiry by its clock, and draws that never make it due: the decision's
    # whole arithmetic, no refresh.
    draws = [0]

    def never_due() -> float:
        draws[0] += 1
        return 0.999

    last_seconds = ReadThrough(
        cache, near=near, early_refresh=on, rng=never_due, clock=lambda: expires_at - 1.0
    )
    from_redis_off, from_redis_on = ReadThrough(cache), ReadThrough(cache, early_refresh=on)

    def reader(reads_: ReadThrough, count: int) -> Callable[[], Awaitable[float]]:
        return lambda: per_call_ns(lambda: reads_.get(KEY, never), count)

    await in_memory_off.get(KEY, never)  # stored in memory by this first read
    if near.get(KEY.key) is None:
        raise BenchError("the first read was not stored in the near cache")
    rows = []
    left, right = await compare(runs, reader(in_memory_off, reads), reader(in_memory_on, reads))
    rows.append(Row("memory hit", "off / on", left, right))
    left, right = await compare(runs, reader(in_memory_off, reads), reader(last_seconds, reads))
    rows.append(Row("memory hit, last seconds", "off / on, 1 s left", left, right))
    redis_reads = max(1, reads // 10)  # a round trip each: fewer, for a bench of seconds
    left, right = await compare(
        runs, reader(from_redis_off, redis_reads), reader(from_redis_on, redis_reads)
    )
    rows.append(Row("redis hit", "off / on", left, right))
    if draws[0] < reads:
        raise BenchError("the last seconds' reads did not draw: they measured something else")
    for reads_ in (in_memory_on, last_seconds, from_redis_on):
        stats = reads_.stats().early_refresh
        if stats is None or stats.started:
            raise BenchError("a refresh started during the bench: its figures would include it")
    return rows


def render(rows: list[Row]) -> str:
    """A plain table, ns per call: each side's best run and median, and the best's difference."""
    header = ("measure", "sides", "before best", "median", "after best", "median", "added")
    lines = ["{:<26} {:<20} {:>11} {:>8} {:>10} {:>8} {:>7}".format(*header)]
    for row in rows:
        before, after = row.before, row.after
        lines.append(
            f"{row.measure:<26} {row.sides:<20} {before.best:>11.0f} {before.median:>8.0f}"
            f" {after.best:>10.0f} {after.median:>8.0f} {row.added_ns:>+7.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m postal_bench.guarded_read")
    parser.add_argument("--url", default=DEFAULT_URL, help="a Redis on loopback")
    parser.add_argument("--reads", type=int, default=2_000, help="memory hits per run")
    parser.add_argument("--runs", type=int, default=50, help="short runs per side, interleaved")
    options = parser.parse_args(argv)
    if options.reads < 10 or options.runs < 1:
        parser.error("--reads must be at least 10 and --runs at least 1")
    try:
        rows = asyncio.run(run(options.url, options.reads, options.runs))
    except FAILURES as exc:
        print(f"postal_bench.guarded_read: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(render(rows))


if __name__ == "__main__":
    main()
