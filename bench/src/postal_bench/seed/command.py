"""`postal bench seed` behind the CLI: options from the command line, the run, the outputs.

Kept out of `postal.cli` so the shared CLI module only declares the options. Exit codes as the
other benches: 2 for a usage error (a bad duration, a non-loopback URL, --plot without
matplotlib), 1 for a run that failed, 130 for Ctrl-C (children stopped, keys deleted, scratch
database dropped on the way out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import typer

from postal.cache import parse_duration
from postal_bench.errors import FAILURES
from postal_bench.imports.bench import step_progress
from postal_bench.output import bench_console, publish
from postal_bench.seed.bench import run_seed_bench
from postal_bench.seed.options import QUICK_POSTS, QUICK_REQUESTS, SeedBenchOptions
from postal_bench.seed.plot import require_matplotlib, write_plot
from postal_bench.seed.render import render_report

NAME = "postal: bench seed"


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"{NAME}: {message}", err=True)
    return typer.Exit(2)


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _usage_error(f"{option}: {exc}") from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the load generator runs in this process, as fast as it can."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_seed_command(
    *,
    latency: str,
    dns_delay: str,
    requests: int,
    connections: int,
    hit_rate: float,
    posts: int,
    runs: int,
    quick: bool,
    plot: Path | None,
    json_path: Path | None,
    redis_url: str,
    database_url: str | None,
) -> None:
    options = SeedBenchOptions(
        latency=_duration(latency, "--latency"),
        dns_delay=_duration(dns_delay, "--dns-delay"),
        requests=QUICK_REQUESTS if quick else requests,
        connections=connections,
        hit_rate=hit_rate,
        posts=QUICK_POSTS if quick else posts,
        runs=1 if quick else runs,
        redis_url=redis_url,
        database_url=database_url,
        quick=quick,
    )
    try:
        options.check()
        if plot is not None:
            require_matplotlib()
    except (*FAILURES, ImportError) as exc:  # NotLoopback included: the load stays here
        raise _usage_error(str(exc)) from None
    console = bench_console()
    try:
        with (
            step_progress(console) as progress,
            asyncio.Runner(loop_factory=_loop_factory()) as runner,
        ):
            report = runner.run(run_seed_bench(options, progress))
    except FAILURES as exc:
        typer.echo(f"{NAME}: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # the servers, the proxy, the keys and the scratch database are gone
        typer.echo(f"{NAME}: interrupted", err=True)
        raise typer.Exit(130) from None
    publish(report, render_report, console, json_path)
    if plot is not None:
        write_plot(report, plot)
        console.print(f"plot written to {plot}", markup=False, highlight=False)
