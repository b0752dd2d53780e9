"""`postal bench faults`: options checked, the matrix run under a progress bar, the table printed.

Exit codes: 2 for a usage error (an unknown fault, a bad duration), 1 when the run could not be
done or a row missed one of its targets, 130 when interrupted (every server the run started is
stopped and the scratch database dropped on the way out).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from postal.cache import parse_duration
from postal_bench.errors import FAILURES
from postal_bench.faults.report import render_report
from postal_bench.faults.runner import FaultOptions, run_faults
from postal_bench.faults.scenarios import faults_named
from postal_bench.output import bench_console, publish, rich_progress

QUICK_PHASES = (1.5, 3.0, 3.0)  # seconds before, during, after: the tests' phases


def _seconds(value: str, option: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def run_faults_command(
    *,
    only: str | None,
    readers: int,
    rate: float,
    posts: int,
    before: str,
    during: str,
    after: str,
    quick: bool,
    json_path: Path | None,
) -> None:
    """The command's body (see `postal.cli.bench_faults` for the options)."""
    phases = (
        QUICK_PHASES
        if quick
        else (
            _seconds(before, "--before"),
            _seconds(during, "--during"),
            _seconds(after, "--after"),
        )
    )
    try:
        options = FaultOptions(
            faults=tuple(faults_named(only)),
            readers=readers,
            rate=rate,
            posts=posts,
            before=phases[0],
            during=phases[1],
            after=phases[2],
        )
        options.check()
    except FAILURES as exc:
        typer.echo(f"postal: bench faults: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        # asyncio's own loop, not uvloop: the load takes a third of a core (measured, and shown
        # per row), and FaultProxy's reset (SO_LINGER on an accepted socket) assumes a real
        # socket object, which uvloop's transports do not always give.
        with rich_progress(console) as progress:
            report = asyncio.run(run_faults(options, progress))
    except FAILURES as exc:
        typer.echo(f"postal: bench faults: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("postal: bench faults: interrupted", err=True)
        raise typer.Exit(130) from None
    publish(report, render_report, console, json_path)
    if not report.passed:
        missed = ", ".join(row.name for row in report.rows if row.problems())
        typer.echo(f"postal: bench faults: targets missed by {missed}", err=True)
        raise typer.Exit(1)
