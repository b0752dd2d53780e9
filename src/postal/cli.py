"""The `postal` command: serve, bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from postal.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Postal: a posts service on Redis."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table (and JSON).")
app.add_typer(bench_app, name="bench")


def settings_or_exit() -> Settings:
    """The settings, or one line per bad variable on stderr and exit code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"postal: configuration error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: POSTAL_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: POSTAL_PORT]")] = None,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from postal.app import create_app
    from postal.observability.logging import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.postal_log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.postal_host,
        port=port or settings.postal_port,
        log_config=None,
    )


@bench_app.command("cache")
def bench_cache(
    url: Annotated[
        str | None,
        typer.Option(
            help="Redis to load; loopback only (127.0.0.0/8, ::1, localhost)."
            " Default: the local Redis, by the name localhost."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks issuing GETs.")] = 100,
    value_size: Annotated[int, typer.Option(min=1, help="Bytes per value.")] = 1024,
    duration: Annotated[str, typer.Option(help="Each measured run, Go-style: 3s, 500ms.")] = "3s",
    runs: Annotated[int, typer.Option(min=1, help="Runs per profile; medians are shown.")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="One 1s run per profile.")] = False,
    floor: Annotated[
        bool, typer.Option("--floor/--no-floor", help="Run redis-benchmark if installed.")
    ] = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
) -> None:
    """GET throughput and latency: Postal's tuned and before profiles next to plain redis-py."""
    import asyncio
    import shutil
    import sys

    from rich.console import Console

    from postal.bench import BenchError, rich_progress, write_json
    from postal.bench.cache import DEFAULT_URL, CacheBenchOptions, render_report, run_cache_bench
    from postal.cache.durations import parse_duration

    try:
        seconds = 1.0 if quick else parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from None
    options = CacheBenchOptions(
        url=url or DEFAULT_URL,
        concurrency=concurrency,
        value_size=value_size,
        duration=seconds,
        runs=1 if quick else runs,
        redis_benchmark=shutil.which("redis-benchmark") if floor else None,
    )
    try:
        options.check()
    except BenchError as exc:  # NotLoopback included: a load generator stays on this machine
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(2) from None
    console = Console(width=None if sys.stdout.isatty() else 120)  # piped: don't squeeze
    try:
        with rich_progress(console) as progress:
            report = asyncio.run(run_cache_bench(options, progress))
    except BenchError as exc:
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(1) from None
    render_report(report, console)
    if json_path is not None:
        write_json(json_path, report.to_json())
        console.print(f"JSON written to {json_path}", markup=False, highlight=False)


@app.command()
def version() -> None:
    """Print Postal's version."""
    from postal import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="postal")


if __name__ == "__main__":
    main()
