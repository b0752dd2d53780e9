"""The load of `postal bench seed`: `ab -n N -c C` over a list of paths, one request per path.

The seed measured with `ab -n 10000 -c 100`: a fixed number of requests, C connections each
sending its next request as soon as the previous reply is in. `loadgen.closed_loop` repeats one
request for a time; here every request has its own path (the post it asks for), so the hit rate
is decided by the bench, not by chance: `request_schedule` draws which requests go to the
pre-warmed hot set (hits) and which to posts never asked for before in the run (misses), in a
random order but in exactly the asked proportion.

The connections are `loadgen.Connection`s (keep-alive, status and length parsed, nothing else),
on this process's event loop; the bench measures this process's CPU too, so a load generator
that became the bottleneck would show.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postal_bench.errors import BenchError
from postal_bench.load import TICK
from postal_bench.loadgen import Connection, HttpTarget

REQUEST_TIMEOUT = 30.0  # s: a request without a reply by then failed (the before profile: <= 6 s)
ERROR_PAUSE = 0.01  # s a connection that failed waits before redialling

# What a failed request raises: refused, reset, closed early (EOFError), a head too long, a reply
# that is not HTTP/1.1 (ValueError), no reply in time.
FAILURES = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError)

CountTick = Callable[[int, int], None]  # (requests answered, requests planned)


def request_schedule(
    requests: int, hit_rate: float, hot: Sequence[int], cold: Sequence[int], seed: int
) -> list[int]:
    """Which post each request asks for: round(requests * (1 - hit_rate)) of them, at random
    positions, take the `cold` ids in order (each once: a miss); the others a random `hot` id."""
    if not 0 <= hit_rate <= 1:
        raise ValueError(f"hit rate must be in [0, 1], got {hit_rate}")
    misses = round(requests * (1 - hit_rate))
    if misses > len(cold):
        raise ValueError(f"{misses} misses need {misses} cold posts, only {len(cold)} exist")
    if misses < requests and not hot:
        raise ValueError("hits need a hot set")
    rng = random.Random(seed)
    miss_at = set(rng.sample(range(requests), misses))
    next_cold = iter(cold)
    return [next(next_cold) if i in miss_at else rng.choice(hot) for i in range(requests)]


@dataclass(slots=True)
class CountedRun:
    """What the load saw: every answered request's latency (failed ones included), errors."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0  # s from the first send to the last reply
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        """Requests answered with a 2xx."""
        return len(self.latencies) - self.errors

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def count_error(self, error: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or error


async def counted_loop(
    host: str,
    port: int,
    paths: Sequence[str],
    *,
    connections: int,
    limit: float,
    tick: CountTick = lambda done, planned: None,
) -> CountedRun:
    """Send one GET per path over `connections` keep-alive connections, back to back.

    Stops by itself: when every path was asked for, or after `limit` seconds (BenchError).
    """
    if connections < 1 or not paths:
        raise BenchError("a counted loop needs a connection and at least one request")
    requests = [HttpTarget(host, port, path).request() for path in paths]
    run = CountedRun()
    next_index = 0
    started = time.perf_counter()
    last_reply = started

    async def worker() -> None:
        nonlocal next_index, last_reply
        perf = time.perf_counter
        connection: Connection | None = None
        try:
            while next_index < len(requests):
                request = requests[next_index]
                next_index += 1
                began = perf()
                try:
                    if connection is None:
                        connection = await Connection.open(HttpTarget(host, port))
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        reply = await connection.exchange(request)
                except FAILURES as exc:
                    run.latencies.append(perf() - began)
                    run.count_error(
                        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    )
                    if connection is not None:
                        await connection.aclose()
                        connection = None
                    await asyncio.sleep(ERROR_PAUSE)
                    continue
                last_reply = perf()
                run.latencies.append(last_reply - began)
                run.statuses[reply.status] = run.statuses.get(reply.status, 0) + 1
                if not 200 <= reply.status < 300:
                    run.count_error(f"HTTP {reply.status}")
                if not connection.reusable:
                    await connection.aclose()
                    connection = None
        finally:
            if connection is not None:
                await connection.aclose()

    workers = [asyncio.create_task(worker()) for _ in range(min(connections, len(requests)))]
    pending = set(workers)
    try:
        async with asyncio.timeout(limit):
            while pending:
                _, pending = await asyncio.wait(pending, timeout=TICK)
                tick(len(run.latencies), len(requests))
    except TimeoutError:
        raise BenchError(
            f"{len(requests) - len(run.latencies):,} of {len(requests):,} requests still"
            f" unanswered after {limit:g}s"
        ) from None
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    for task in workers:
        error = task.exception()
        if error is not None:
            raise error  # a bug in a worker, not a failed request: those are counted
    run.elapsed = max(last_reply - started, 1e-9)
    return run
