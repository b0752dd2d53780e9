"""`postal migrate`: the database to the latest schema."""

from __future__ import annotations

import typer

from postal.cli.config import settings_or_exit


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
