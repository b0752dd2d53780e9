"""`postal import`: the options; the command itself is `postal.cli.import_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from postal.cli.config import settings_or_exit


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
    from postal.cli.import_run import ImportCommand, run_import_command
    from postal.imports.importer import ImportOptions

    options = ImportOptions(
        skip_invalid=skip_invalid,
        ignore_unknown_columns=ignore_unknown_columns,
        warm=warm,
        batch_size=batch_size,
    )
    command = ImportCommand(file, options, json_path, cache_wait)
    raise typer.Exit(run_import_command(settings_or_exit(), command))
