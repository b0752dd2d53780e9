"""`postal cache warm | invalidate`: the options; the commands themselves are `cli.cache_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from postal.cli.config import settings_or_exit

app = typer.Typer(
    no_args_is_help=True,
    help="Warm the cache, or invalidate posts in it, the way the service does.",
)

MAX_TOP = 10_000_000  # posts: a bound on --top, far above what a cache holds warm


@app.command()
def warm(
    file: Annotated[
        Path | None,
        typer.Argument(
            dir_okay=False,
            metavar="[FILE]",
            help="Post ids, one a line (blank lines and # comments skipped).",
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_TOP, help="The N newest posts (the first pages of the list)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Read posts through the service's read path: a miss is filled (guarded), a hit left alone.

    Exit codes: 0 done, 1 the database or cache unusable, 2 bad usage, 3 some posts not
    filled (Redis did not take them), 130 interrupted.
    """
    from postal.cli.cache_run import EXIT_USAGE, WarmCommand, run_warm

    if (file is None) == (top is None):
        typer.echo("postal: cache warm: give either --top N or a FILE of ids", err=True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(run_warm(settings_or_exit(), WarmCommand(top, file, json_output)))


@app.command()
def invalidate(
    ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="The posts to invalidate.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every post in the database, and every list page.")
    ] = False,
    cache_wait: Annotated[
        float,
        typer.Option(min=0, max=3600, help="Seconds a batch Redis did not take may be retried."),
    ] = 10.0,
    json_output: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Invalidate posts (and every list page) through the service's invalidation path.

    Exit codes: 0 done, 1 the database or cache unusable, 2 bad usage, 3 Redis did not take a
    batch within --cache-wait (the rest was not sent), 130 interrupted.
    """
    from postal.cli.cache_run import (
        EXIT_USAGE,
        CommandError,
        InvalidateCommand,
        parse_ids,
        run_invalidate,
    )

    if bool(ids) == everything:
        typer.echo("postal: cache invalidate: give either post ids or --all", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        post_ids = parse_ids(ids or [])
    except CommandError as exc:
        typer.echo(f"postal: cache invalidate: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    command = InvalidateCommand(post_ids, everything, cache_wait, json_output)
    raise typer.Exit(run_invalidate(settings_or_exit(), command))
