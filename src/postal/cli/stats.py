"""`postal stats`: the options; the command itself is `postal.stats.command`."""

from __future__ import annotations

from typing import Annotated

import typer

from postal.cli.config import settings_or_exit


def stats(
    url: Annotated[str, typer.Option(help="The running Postal.")] = "http://127.0.0.1:8000",
    interval: Annotated[
        str, typer.Option(help="Between the two scrapes rates are taken over, Go-style.")
    ] = "1s",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    redis_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A Redis URL, without its password: that comes from REDISCLI_AUTH"
            " (repeatable); default: READ_REDIS_URL and WRITE_REDIS_URL, matched with the"
            " servers Postal names."
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
    import os
    import sys

    from rich.console import Console

    from postal.cache import mask_url, parse_duration
    from postal.stats.command import StatsOptions, run_stats
    from postal.stats.redis_probe import with_password

    try:
        seconds = parse_duration(interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--interval") from None
    if seconds <= 0:
        raise typer.BadParameter("expected a duration above 0", param_hint="--interval")
    given = list(redis_url or ())
    for candidate in given:
        if mask_url(candidate) != candidate:  # a password, in every user's `ps`
            typer.echo(
                f"postal: stats: --redis-url {mask_url(candidate)} carries a password, which any"
                " user of this machine can read in the process list: give the URL without it"
                " and the password in REDISCLI_AUTH, or set READ_REDIS_URL / WRITE_REDIS_URL",
                err=True,
            )
            raise typer.Exit(2)
    password = os.environ.get("REDISCLI_AUTH")  # redis-cli's own variable for the same purpose
    if password:
        given = [with_password(candidate, password) for candidate in given]
    settings = settings_or_exit()  # READ_REDIS_URL, WRITE_REDIS_URL and TLS, as the service's
    local_urls = [settings.read_redis_url, settings.write_redis_url]
    options = StatsOptions(
        url=url,
        token=settings.api_token,
        interval=seconds,
        watch=watch,
        json=json_output,
        redis_urls=[*given, *(u for u in local_urls if u is not None)],
        tls=settings.tls(),
        pings=pings,
        probe_redis=redis,
    )
    console = Console(width=None if sys.stdout.isatty() else 160)  # piped: don't squeeze
    code = run_stats(options, console, Console(stderr=True))
    if code:
        raise typer.Exit(code)
