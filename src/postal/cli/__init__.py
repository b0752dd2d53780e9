"""The `postal` command: serve, migrate, import, cache, stats, version; one module a command.

Commands of other distributions join it through the `postal.commands` entry point group: the
benchmarks (`postal-bench`, in the repository's bench/) add `postal bench ...` when installed.
The product itself ships none.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer

from postal.cli.cache import app as cache_app
from postal.cli.imports import import_posts
from postal.cli.migrate import migrate
from postal.cli.serve import serve
from postal.cli.stats import stats
from postal.cli.version import print_version, version

PLUGIN_GROUP = "postal.commands"

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Postal: a posts service on Redis."
)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Postal: a posts service on Redis."""


app.command()(serve)
app.command()(migrate)
app.command("import")(import_posts)
app.add_typer(cache_app, name="cache")
app.command()(stats)
app.command()(version)


def add_plugins(target: typer.Typer) -> None:
    """Each installed `postal.commands` entry point, a Typer app, as a command group."""
    for entry in entry_points(group=PLUGIN_GROUP):
        target.add_typer(entry.load(), name=entry.name)


add_plugins(app)


def main() -> None:
    app(prog_name="postal")


__all__ = ["app", "main"]
