"""`postal version` and `postal --version`."""

from __future__ import annotations

import typer


def print_version(asked: bool) -> None:
    """`--version`'s callback: the program's name and version, then exit."""
    if asked:
        from postal import __version__

        typer.echo(f"postal {__version__}")
        raise typer.Exit()


def version() -> None:
    """Print Postal's version (the bare number, for scripts; `postal --version` says more)."""
    from postal import __version__

    typer.echo(__version__)
