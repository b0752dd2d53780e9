"""What tracing costs a cached read, in-process: `python -m postal_bench.tracing`.

The hot route's own work, without the network, the server or Redis, as
`postal_bench.access_log` measures it: Postal's outermost layer (`FastReads`) calls a service
that looks the post up in a near cache of the kind the app builds (`NearCache` with tracing
off, `TracedNearCache` on; empty, so the lookup costs what a hit's does and the entry is handed
back at once), and a `send` that drops the messages. With tracing on, the SDK's tracer provider
samples every request (its default) and hands each span to a batch processor whose exporter
drops them: the request span and its near-cache event are made, ended and queued as in
production, and nothing is sent. CPU seconds of this process over `--requests` calls, per
request, the median of `--runs`; `--only off` runs tracing off alone (on code that predates
it, too: the "before" column).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

# What a worker has imported (FastAPI brings OpenTelemetry's API, before and after tracing
# existed): without it, which modules are loaded alone moved the "off" figure by 3-5% here.
import postal.app  # noqa: F401
from postal.api.fast_reads import FastReads
from postal.cache import NearCache
from postal.posts.entries import Entry
from postal_bench.fast_lane import ENTRY, cpu_per_request, inner


class CachedPosts:
    """A posts service whose every read looks in `near`, then hands back the one entry."""

    def __init__(self, near: NearCache) -> None:
        self._near = near

    async def read_post(self, post_id: int) -> Entry:
        self._near.get("post:{1}")
        return ENTRY


def _near(kind: type[NearCache] = NearCache) -> NearCache:
    return kind(key_prefix="bench:", max_bytes=1 << 20, ttl=10.0)


async def _run(lane: FastReads, near: NearCache, requests: int) -> float:
    """CPU seconds a request over `requests` calls of `lane`."""
    return await cpu_per_request(lane, CachedPosts(near), requests)


def _lanes(only: str | None) -> dict[str, Callable[[], tuple[FastReads, NearCache]]]:
    lanes: dict[str, Callable[[], tuple[FastReads, NearCache]]] = {
        "off": lambda: (FastReads(inner), _near())
    }
    if only == "off":
        return lanes
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from postal.api.tracing import RequestSpans
    from postal.observability.tracing import TracedNearCache, tracer_of

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    spans = RequestSpans(tracer_of(provider))
    lanes["on"] = lambda: (FastReads(inner, tracing=spans), _near(TracedNearCache))
    return lanes


def measure(requests: int, runs: int, only: str | None = None) -> dict[str, float]:
    """Median CPU microseconds a request, with tracing off (and on)."""
    lanes = _lanes(only)
    results: dict[str, list[float]] = {name: [] for name in lanes}
    for _ in range(runs):
        for name, make in lanes.items():  # interleaved: a noisy neighbour hits both
            lane, near = make()
            results[name].append(asyncio.run(_run(lane, near, requests)))
    return {name: statistics.median(values) * 1e6 for name, values in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postal_bench.tracing")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["off"], help="tracing off alone")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    if options.requests < 1 or options.runs < 1:
        parser.error("--requests and --runs must be at least 1")
    figures = measure(options.requests, options.runs, options.only)
    if "on" in figures:
        figures["added"] = figures["on"] - figures["off"]
    if options.json:
        print(json.dumps({name: round(value, 2) for name, value in figures.items()}))
        return 0
    runs = f"({options.runs} runs of {options.requests:,})"
    print(f"{'tracing':<12}{'CPU us a request':>18}   {runs}")
    for name, value in figures.items():
        print(f"{name:<12}{value:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
