"""`postal serve`: the HTTP API on uvicorn (uvloop, httptools, bounded by `serve_protocol`), with
its workers, the embedded Redis of a first run, and the metrics directory that --workers N share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from postal.cli.config import settings_or_exit
from postal.settings import Settings

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GRACEFUL_SHUTDOWN = 10  # seconds for requests in flight to finish after SIGTERM


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: POSTAL_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: POSTAL_PORT]")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Worker processes, each with its pools [default: WEB_CONCURRENCY, else 1].",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn, uvloop, httptools, with Postal's HTTP limits)."""
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
    workers = worker_count(workers, settings)
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
    if settings.loopback_only and not binds_loopback(bind):
        # Binding loopback instead would leave a container that no one can reach, and no one told.
        typer.echo(
            f"postal: configuration error: serving on {bind} needs POSTAL_API_TOKEN: without one"
            " Postal answers loopback clients only. Set a token (at least 32 characters;"
            " `openssl rand -hex 32` makes one), or serve on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)
    if settings.loopback_only:
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
        # What was decided, for /status (the workers inherit it); an explicit --workers may
        # differ from the WEB_CONCURRENCY given.
        os.environ["WEB_CONCURRENCY"] = str(workers)
        uvicorn.run(
            "postal.app:app_from_environment",
            factory=True,
            host=bind,
            port=port or settings.postal_port,
            workers=workers,
            **server_options(),
        )


def binds_loopback(host: str) -> bool:
    """Whether `host` (a bind address) is the loopback only: `localhost` or a loopback IP."""
    from postal.api.loopback import is_loopback_address

    return host.lower() in LOOPBACK_HOSTS or is_loopback_address(host)


def worker_count(option: int | None, settings: Settings) -> int:
    """--workers when given; else WEB_CONCURRENCY (checked by the settings: a whole number of
    at least 1); else 1."""
    if option is not None:
        return option
    return settings.web_concurrency or 1


def server_options() -> dict[str, Any]:
    """How Postal runs uvicorn, but for the app, the address and the workers: for `postal serve`
    and for the bare route of `postal bench http`, which must measure the same server. The
    protocol reads its limits from the environment (`serve_limits.py`)."""
    from postal.cli.serve_protocol import BoundedHttpToolsProtocol

    return {
        "loop": "uvloop",
        "http": BoundedHttpToolsProtocol,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
    }


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)
