"""`postal bench ...`: the benchmark commands, added to `postal` by the `postal.commands` entry
point. Each parses its options here and runs in its module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table (and JSON).")


@app.command("cache")
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

    from postal.cache import parse_duration
    from postal_bench.cache import DEFAULT_URL, CacheBenchOptions, render_report, run_cache_bench
    from postal_bench.errors import FAILURES
    from postal_bench.output import bench_console, publish, rich_progress
    from postal_bench.redis_topologies import parse_topologies

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
    except FAILURES as exc:  # NotLoopback included: a load generator stays on this machine
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with rich_progress(console) as progress:
            report = asyncio.run(run_cache_bench(options, progress))
    except FAILURES as exc:
        typer.echo(f"postal: bench cache: {exc}", err=True)
        raise typer.Exit(1) from None
    publish(report, render_report, console, json_path)


@app.command("http")
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
        str,
        typer.Option(
            help="Comma-separated, of floor, peer, postal (near cache on) and postal-near-off."
        ),
    ] = "floor,peer,postal,postal-near-off",
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
    """HTTP req/s, latency and CPU a request: Postal's cached GET, near cache on and off, next to
    a bare route and a plain Redis app."""
    import asyncio
    import shutil
    from collections.abc import Callable

    from postal.cache import parse_duration
    from postal_bench.errors import FAILURES
    from postal_bench.http.bench import run_http_bench
    from postal_bench.http.options import HttpBenchOptions
    from postal_bench.http.report import render_report
    from postal_bench.output import bench_console, publish, rich_progress
    from postal_bench.redis_topologies import parse_topologies

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
    except FAILURES as exc:  # NotLoopback included: a load generator stays on this machine
        typer.echo(f"postal: bench http: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with (
            rich_progress(console) as progress,
            asyncio.Runner(loop_factory=loop_factory) as runner,
        ):
            report = runner.run(run_http_bench(options, progress))
    except FAILURES as exc:
        typer.echo(f"postal: bench http: {exc}", err=True)
        raise typer.Exit(1) from None
    publish(report, render_report, console, json_path)


@app.command("import")
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

    from postal_bench.errors import FAILURES
    from postal_bench.imports.bench import (
        QUICK_ROWS,
        ImportBenchOptions,
        parse_methods,
        run_import_bench,
        step_progress,
    )
    from postal_bench.imports.render import render_report
    from postal_bench.output import bench_console, publish

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
    except FAILURES as exc:  # NotLoopback included: a benchmark stays on this machine
        typer.echo(f"postal: bench import: {exc}", err=True)
        raise typer.Exit(2) from None
    console = bench_console()
    try:
        with step_progress(console) as progress:
            report = asyncio.run(run_import_bench(options, progress))
    except FAILURES as exc:
        typer.echo(f"postal: bench import: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # the import process, the scratch database and the keys are gone
        typer.echo("postal: bench import: interrupted", err=True)
        raise typer.Exit(130) from None
    publish(report, render_report, console, json_path)


@app.command("seed")
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
    from postal_bench.seed.command import run_seed_command

    run_seed_command(
        latency=latency, dns_delay=dns_delay, requests=requests, connections=connections,
        hit_rate=hit_rate, posts=posts, runs=runs, quick=quick, plot=plot, json_path=json_path,
        redis_url=redis_url, database_url=database_url,
    )  # fmt: skip


@app.command("faults")
def bench_faults(
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated faults: refused, black-holed, slow, restarted, replica-killed,"
            " pool-exhausted, dns-failing, dns-moved, tls-unverified, database-down,"
            " near-tracking-killed, near-partitioned. Default: all."
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
    """Twelve Redis, database and near-cache faults under 100 readers and a writer: failed,
    stale, wrong reads."""
    from postal_bench.faults.command import run_faults_command

    run_faults_command(
        only=only, readers=readers, rate=rate, posts=posts, before=before, during=during,
        after=after, quick=quick, json_path=json_path,
    )  # fmt: skip
