"""The `postal` command: serve, migrate, bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from postal.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Postal: a posts service on Redis."
)


def _print_version(asked: bool) -> None:
    if asked:
        from postal import __version__

        typer.echo(f"postal {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Postal: a posts service on Redis."""


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


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GRACEFUL_SHUTDOWN = 10  # seconds for requests in flight to finish after SIGTERM


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: POSTAL_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: POSTAL_PORT]")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its pools.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn, uvloop, httptools)."""
    import asyncio
    import logging
    import os
    import signal
    from contextlib import ExitStack

    import uvicorn

    from postal.cache import mask_url
    from postal.embedded import EmbeddedRedis, EmbeddedRedisError
    from postal.observability.logging import configure_from_settings
    from postal.observability.multiproc import MetricsDirectoryInUse, metrics_directory
    from postal.posts.errors import DatabaseUnavailable

    settings = settings_or_exit()
    configure_from_settings(settings)
    logger = logging.getLogger("postal.serve")
    no_redis = settings.read_redis_url is None and settings.write_redis_url is None
    if no_redis and not settings.embedded_redis:
        typer.echo(
            "postal: configuration error: DATABASE_URL is set but no READ_REDIS_URL or"
            " WRITE_REDIS_URL: every instance must share one Redis (the embedded Redis is"
            " for the embedded default only, with no DATABASE_URL)",
            err=True,
        )
        raise typer.Exit(2)
    bind = host or settings.postal_host
    if settings.api_token is None:
        if bind not in LOOPBACK_HOSTS:
            logger.warning("POSTAL_API_TOKEN is not set: binding 127.0.0.1, not %s", bind)
            bind = "127.0.0.1"
        logger.warning("POSTAL_API_TOKEN is not set: writes are open to anyone on this machine")
    with ExitStack() as stack:
        # PROMETHEUS_MULTIPROC_DIR must be set before anything imports prometheus_client (it
        # reads it once): so before postal.app, which the workers import too.
        try:
            metrics_dir = stack.enter_context(metrics_directory(workers))
        except MetricsDirectoryInUse as exc:
            typer.echo(f"postal: configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
        from postal.app import NotMigrated, prepare_database

        redis_note = ""
        if settings.embedded_redis:
            try:
                embedded = stack.enter_context(EmbeddedRedis(Path(settings.postal_data_dir)))
            except EmbeddedRedisError as exc:
                typer.echo(f"postal: {exc}", err=True)
                raise typer.Exit(1) from None
            # Workers are separate processes: they read their settings from the environment.
            os.environ["READ_REDIS_URL"] = os.environ["WRITE_REDIS_URL"] = embedded.url
            settings = settings_or_exit()
            configure_from_settings(settings)  # its password is now one to mask
            redis_note = " (embedded, started by Postal)"
        try:
            asyncio.run(prepare_database(settings.database))
        except (NotMigrated, DatabaseUnavailable) as exc:
            typer.echo(f"postal: {mask_url(settings.database)}: {exc}", err=True)
            raise typer.Exit(1) from None
        where = f"http://{bind}:{port or settings.postal_port}"
        typer.echo(f"Postal serving on {where} with {workers} worker(s)")
        typer.echo(f"  database: {mask_url(settings.database)}")
        typer.echo(f"  Redis read: {mask_url(settings.read_url)}{redis_note}")
        typer.echo(f"  Redis write: {mask_url(settings.write_url)}{redis_note}")
        if metrics_dir is not None:
            typer.echo(f"  metrics: all workers' /metrics files in {metrics_dir}")
        # uvicorn re-raises SIGTERM once it has shut down; with the default handler that kills
        # the process on the spot, and the embedded Redis would outlive us. Exit normally instead.
        signal.signal(signal.SIGTERM, _exit_quietly)
        os.environ["WEB_CONCURRENCY"] = str(workers)  # for /status: the workers inherit it
        uvicorn.run(
            "postal.app:app_from_environment",
            factory=True,
            host=bind,
            port=port or settings.postal_port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def migrate() -> None:
    """Bring the database (DATABASE_URL) to the latest schema."""
    import asyncio

    from postal.cache import mask_url
    from postal.posts.errors import DatabaseUnavailable
    from postal.storage.migrate import upgrade

    settings = settings_or_exit()
    try:
        asyncio.run(upgrade(settings.database))
    except DatabaseUnavailable as exc:
        typer.echo(f"postal: migrate: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{mask_url(settings.database)}: at the latest migration")


@bench_app.command("cache")
def bench_cache(
    url: Annotated[
        str | None,
        typer.Option(
            help="Redis to load: redis://, comma-separated replicas, redis+sentinel:// or"
            " redis+cluster://; loopback only (127.0.0.0/8, ::1, localhost)."
            " Default: the local Redis, by the name localhost."
        ),
    ] = None,
    write_url: Annotated[
        str | None,
        typer.Option(
            help="Where the bench writes its keys (the primary); needed when --url is a list of"
            " replicas. Default: --url."
        ),
    ] = None,
    topologies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated, of single (the --url's one server) and cluster (a Redis"
            " Cluster of 3 masters the bench starts): each measured, side by side."
            " Default: --url alone."
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

    from postal.bench import BenchError, bench_console, publish, rich_progress
    from postal.bench.cache import DEFAULT_URL, CacheBenchOptions, render_report, run_cache_bench
    from postal.bench.redis_topologies import parse_topologies
    from postal.cache import parse_duration

    try:
        seconds = 1.0 if quick else parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from None
    try:
        options = CacheBenchOptions(
            url=url or DEFAULT_URL,
            concurrency=concurrency,
            value_size=value_size,
            duration=seconds,
            runs=1 if quick else runs,
            redis_benchmark=shutil.which("redis-benchmark") if floor else None,
            write_url=write_url,
            topologies=parse_topologies(topologies) if topologies is not None else (),
        )
        options.check()
    except BenchError as exc:  # NotLoopback included: a load generator stays on this machine
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with rich_progress(console) as progress:
            report = asyncio.run(run_cache_bench(options, progress))
    except BenchError as exc:
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(1) from None
    publish(report, render_report, console, json_path)


@bench_app.command("http")
def bench_http(
    redis_url: Annotated[
        str,
        typer.Option(
            help="Redis for the peer and Postal: redis://, comma-separated replicas,"
            " redis+sentinel:// or redis+cluster://; loopback only (127.0.0.0/8, ::1)."
        ),
    ] = "redis://127.0.0.1:6379/0",
    write_url: Annotated[
        str | None,
        typer.Option(
            help="Postal's WRITE_REDIS_URL, where the bench writes its keys (the primary);"
            " needed when --redis-url is a list of replicas. Default: --redis-url."
        ),
    ] = None,
    topologies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated, of single (the --redis-url's one server) and cluster (a Redis"
            " Cluster of 3 masters the bench starts): the peer and Postal served against each."
            " Default: --redis-url alone."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Postal's database, e.g. postgresql+asyncpg://... on loopback."
            " Default: SQLite in a temporary directory."
        ),
    ] = None,
    targets: Annotated[
        str, typer.Option(help="Comma-separated, of floor, peer, postal.")
    ] = "floor,peer,postal",
    workers: Annotated[int, typer.Option(min=1, help="uvicorn workers per server.")] = 1,
    connections: Annotated[int, typer.Option(min=1, help="Closed-loop connections.")] = 100,
    rate: Annotated[float, typer.Option(min=1, help="Open-loop requests per second.")] = 1000,
    duration: Annotated[str, typer.Option(help="Each measured loop, Go-style: 3s, 500ms.")] = "3s",
    runs: Annotated[int, typer.Option(min=1, help="Runs per target; medians are shown.")] = 3,
    value_size: Annotated[int, typer.Option(min=1, help="Characters in the post's body.")] = 1024,
    quick: Annotated[bool, typer.Option("--quick", help="One 1s run per target.")] = False,
    wrk: Annotated[
        bool, typer.Option("--wrk/--no-wrk", help="Closed loop by wrk if installed.")
    ] = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
) -> None:
    """HTTP req/s and latency: Postal's cached GET next to a bare route and a plain Redis app."""
    import asyncio
    import shutil
    from collections.abc import Callable

    from postal.bench import BenchError, bench_console, publish, rich_progress
    from postal.bench.http import HttpBenchOptions, render_report, run_http_bench
    from postal.bench.redis_topologies import parse_topologies
    from postal.cache import parse_duration

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:  # the load generator runs here: on uvloop when installed, as the servers do
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass

    try:
        seconds = 1.0 if quick else parse_duration(duration)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from None
    try:
        options = HttpBenchOptions(
            redis_url=redis_url,
            database_url=database_url,
            targets=tuple(name.strip() for name in targets.split(",") if name.strip()),
            workers=workers,
            connections=connections,
            rate=rate,
            duration=seconds,
            runs=1 if quick else runs,
            value_size=value_size,
            wrk=shutil.which("wrk") if wrk else None,
            write_url=write_url,
            topologies=parse_topologies(topologies) if topologies is not None else (),
        )
        options.check()
    except BenchError as exc:  # NotLoopback included: a load generator stays on this machine
        typer.echo(f"postal: bench http: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with (
            rich_progress(console) as progress,
            asyncio.Runner(loop_factory=loop_factory) as runner,
        ):
            report = runner.run(run_http_bench(options, progress))
    except BenchError as exc:
        typer.echo(f"postal: bench http: {exc}", err=True)
        raise typer.Exit(1) from None
    publish(report, render_report, console, json_path)


@bench_app.command("import")
def bench_import(
    rows: Annotated[int, typer.Option(min=1, help="Rows in the generated CSV.")] = 100_000,
    runs: Annotated[int, typer.Option(min=1, help="Imports per method; medians are shown.")] = 3,
    method: Annotated[
        str, typer.Option(help="copy, insert, or both (each run imports with both).")
    ] = "both",
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An empty, loopback postgresql+asyncpg:// database, emptied between runs."
            " Default: a scratch database on 127.0.0.1:5432 (user postgres), dropped after."
        ),
    ] = None,
    redis_url: Annotated[
        str, typer.Option(help="Redis for the cache step; loopback only (127.0.0.0/8, ::1).")
    ] = "redis://127.0.0.1:6379/0",
    rss_check: Annotated[
        bool,
        typer.Option(
            "--rss-check", help="Also import a --rss-rows file once; compare the peak RSS."
        ),
    ] = False,
    rss_rows: Annotated[int, typer.Option(min=1, help="Rows for --rss-check.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="The generated CSV's seed.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per database batch.")] = 1000,
    quick: Annotated[bool, typer.Option("--quick", help="20,000 rows, one run.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
) -> None:
    """CSV import into PostgreSQL: rows/s, peak RSS, COPY vs INSERT, pipelined cache step."""
    import asyncio

    from postal.bench import BenchError, bench_console, publish
    from postal.bench.import_render import render_report
    from postal.bench.imports import (
        QUICK_ROWS,
        ImportBenchOptions,
        parse_methods,
        run_import_bench,
        step_progress,
    )

    try:
        options = ImportBenchOptions(
            rows=QUICK_ROWS if quick else rows,
            runs=1 if quick else runs,
            methods=parse_methods(method),
            database_url=database_url,
            redis_url=redis_url,
            seed=seed,
            batch_size=batch_size,
            rss_rows=rss_rows if rss_check else None,
        )
        options.check()
    except BenchError as exc:  # NotLoopback included: a benchmark stays on this machine
        typer.echo(f"postal: bench import: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with step_progress(console) as progress:
            report = asyncio.run(run_import_bench(options, progress))
    except BenchError as exc:
        typer.echo(f"postal: bench import: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # the import process, the scratch database and the keys are gone
        typer.echo("postal: bench import: interrupted", err=True)
        raise typer.Exit(130) from None
    publish(report, render_report, console, json_path)


@bench_app.command("seed")
def bench_seed(
    latency: Annotated[str, typer.Option(help="Added by the proxy to Redis, each way.")] = "1ms",
    dns_delay: Annotated[str, typer.Option(help="Per lookup of Redis's host name.")] = "20ms",
    requests: Annotated[int, typer.Option(help="Requests per load (ab -n).")] = 10_000,
    connections: Annotated[int, typer.Option(help="Connections (ab -c).")] = 100,
    hit_rate: Annotated[float, typer.Option(help="Share of GETs to the warm hot set.")] = 0.9,
    posts: Annotated[int, typer.Option(help="Posts in the database.")] = 10_000,
    runs: Annotated[int, typer.Option(help="Runs per profile, interleaved; medians.")] = 3,
    quick: Annotated[
        bool, typer.Option("--quick", help="2,000 requests, 2,000 posts, one run.")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="Also draw the latencies (PNG).")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
    redis_url: Annotated[
        str, typer.Option(help="The Redis behind the proxy; loopback only.")
    ] = "redis://127.0.0.1:6379/0",
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An empty, loopback postgresql+asyncpg:// database, emptied after."
            " Default: a scratch database on 127.0.0.1:5432 (user postgres), dropped after."
        ),
    ] = None,
) -> None:
    """The incident's before/after table: the before profile and the tuned one, same load."""
    from postal.bench.seed_cli import run_seed_command

    run_seed_command(
        latency=latency, dns_delay=dns_delay, requests=requests, connections=connections,
        hit_rate=hit_rate, posts=posts, runs=runs, quick=quick, plot=plot, json_path=json_path,
        redis_url=redis_url, database_url=database_url,
    )  # fmt: skip


@bench_app.command("faults")
def bench_faults(
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated faults: refused, black-holed, slow, restarted, replica-killed,"
            " pool-exhausted, dns-failing, dns-moved, tls-unverified, database-down. Default: all."
        ),
    ] = None,
    readers: Annotated[int, typer.Option(min=1, help="Concurrent reader connections.")] = 100,
    rate: Annotated[
        float, typer.Option(min=0, help="Reads/s of all readers together; 0: back to back.")
    ] = 500,
    posts: Annotated[int, typer.Option(min=1, help="Posts in the hot set.")] = 200,
    before: Annotated[str, typer.Option(help="Healthy load before the fault: 3s.")] = "3s",
    during: Annotated[str, typer.Option(help="Load during the fault.")] = "5s",
    after: Annotated[str, typer.Option(help="Load after the fault ends.")] = "5s",
    quick: Annotated[bool, typer.Option("--quick", help="Phases of 1.5s, 3s and 3s.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
) -> None:
    """Ten Redis and database faults under 100 readers and a writer: failed, stale, wrong reads."""
    from postal.bench.faults.command import run_faults_command

    run_faults_command(
        only=only, readers=readers, rate=rate, posts=posts, before=before, during=during,
        after=after, quick=quick, json_path=json_path,
    )  # fmt: skip


@app.command("import")
def import_posts(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE.csv",
            help="The CSV file (header row first).",
        ),
    ],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Write the good rows; report the bad ones.")
    ] = False,
    ignore_unknown_columns: Annotated[
        bool, typer.Option("--ignore-unknown-columns", help="Ignore columns Postal lacks.")
    ] = False,
    warm: Annotated[
        bool, typer.Option("--warm", help="Fill the cache with the imported posts.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows per database batch.")
    ] = 1000,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this file.")
    ] = None,
    cache_wait: Annotated[
        float,
        typer.Option(min=0, help="Seconds to wait for a pending cache invalidation to land."),
    ] = 10.0,
) -> None:
    """Import posts from a CSV file: all or nothing, unless --skip-invalid.

    Exit codes: 0 imported, 1 nothing imported, 2 bad usage, 3 imported but the cache
    invalidation is still pending (cached copies expire with their TTL), 130 interrupted.
    """
    from postal.import_cli import ImportCommand, run_import_command
    from postal.posts.imports import ImportOptions

    options = ImportOptions(
        skip_invalid=skip_invalid,
        ignore_unknown_columns=ignore_unknown_columns,
        warm=warm,
        batch_size=batch_size,
    )
    command = ImportCommand(file, options, json_path, cache_wait)
    raise typer.Exit(run_import_command(settings_or_exit(), command))


@app.command()
def stats(
    url: Annotated[str, typer.Option(help="The running Postal.")] = "http://127.0.0.1:8000",
    interval: Annotated[
        str, typer.Option(help="Between the two scrapes rates are taken over, Go-style.")
    ] = "1s",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    redis_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A Redis URL with its password (repeatable); default: READ_REDIS_URL and"
            " WRITE_REDIS_URL, matched with the servers Postal names."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable (JSON lines with --watch).")
    ] = False,
    pings: Annotated[int, typer.Option(min=1, max=10_000, help="PINGs per Redis.")] = 100,
    redis: Annotated[
        bool, typer.Option("--redis/--no-redis", help="Ask the Redis servers too.")
    ] = True,
) -> None:
    """A running Postal and its Redis at a glance: hit rate, ops/s, p50/p99, pools, Redis."""
    import sys

    from rich.console import Console

    from postal.cache import parse_duration
    from postal.stats.command import StatsOptions, run_stats

    try:
        seconds = parse_duration(interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--interval") from None
    if seconds <= 0:
        raise typer.BadParameter("expected a duration above 0", param_hint="--interval")
    settings = settings_or_exit()  # READ_REDIS_URL, WRITE_REDIS_URL and TLS, as the service's
    local_urls = [settings.read_redis_url, settings.write_redis_url]
    options = StatsOptions(
        url=url,
        interval=seconds,
        watch=watch,
        json=json_output,
        redis_urls=[*(redis_url or ()), *(u for u in local_urls if u is not None)],
        tls=settings.tls(),
        pings=pings,
        probe_redis=redis,
    )
    console = Console(width=None if sys.stdout.isatty() else 160)  # piped: don't squeeze
    code = run_stats(options, console, Console(stderr=True))
    if code:
        raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print Postal's version (the bare number, for scripts; `postal --version` says more)."""
    from postal import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="postal")


if __name__ == "__main__":
    main()
