"""What the access log costs a cached read, in-process: `python -m postal_bench.access_log`.

The hot route's own work, without the network, the server or Redis: Postal's outermost layer
(`FastReads`: admission, the request id, the metrics' observation, the answer) calls a service
that hands back one cached entry at once, and a `send` that drops the messages. Run with the
access log off (`FastReads(access_log=None)`, the default) and on (`AccessLog`, formatted as
JSON by Postal's own handler and written to /dev/null, as a container's stderr is written to a
pipe). CPU seconds of this process over `--requests` calls, per request, the median of
`--runs`; printed as a table, and as JSON with `--json`.

What it leaves out is the same in both columns (uvicorn's parsing, the socket, Redis), so the
difference between them is the access log's cost a request; the real request's CPU, to set it
against, is what `postal bench http` measures (tens of microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
from collections.abc import Callable

from postal.api.access_log import AccessLog
from postal.api.fast_reads import FastReads
from postal.observability.logging import configure_logging
from postal.posts.entries import Entry
from postal_bench.fast_lane import ENTRY, cpu_per_request, inner


class CachedPosts:
    """A posts service whose every read is a hit on the one entry."""

    async def read_post(self, post_id: int) -> Entry:
        return ENTRY


async def _run(lane: FastReads, requests: int) -> float:
    """CPU seconds a request over `requests` calls of `lane`."""
    return await cpu_per_request(lane, CachedPosts(), requests)


def measure(requests: int, runs: int) -> dict[str, float]:
    """Median CPU microseconds a request, with the access log off and on."""
    lanes: dict[str, Callable[[], FastReads]] = {
        "off": lambda: FastReads(inner),
        "on": lambda: FastReads(inner, access_log=AccessLog()),
    }
    results: dict[str, list[float]] = {name: [] for name in lanes}
    for _ in range(runs):
        for name, make in lanes.items():  # interleaved: a noisy neighbour hits both
            results[name].append(asyncio.run(_run(make(), requests)))
    return {name: statistics.median(values) * 1e6 for name, values in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postal_bench.access_log")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    if options.requests < 1 or options.runs < 1:
        parser.error("--requests and --runs must be at least 1")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(os.devnull, "w") as devnull:
        configure_logging("WARNING", "json", stream=devnull)
        try:
            figures = measure(options.requests, options.runs)
        finally:
            root.handlers[:] = handlers  # as it found them
            root.setLevel(level)
    figures["added"] = figures["on"] - figures["off"]
    if options.json:
        print(json.dumps({name: round(value, 2) for name, value in figures.items()}))
        return 0
    runs = f"({options.runs} runs of {options.requests:,})"
    print(f"{'access log':<12}{'CPU us a request':>18}   {runs}")
    for name in ("off", "on", "added"):
        print(f"{name:<12}{figures[name]:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
