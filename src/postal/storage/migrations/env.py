"""Alembic's entry point, async-capable, run by Alembic itself for every command.

Two ways in:

- from `postal.storage.migrate`, which opens the connection (async engine, `run_sync`) and hands
  it over in `config.attributes["connection"]`: migrations then run on it, inside the caller's
  event loop;
- from the `alembic` command line (developers: `alembic revision --autogenerate`), where this file
  builds the engine itself from `sqlalchemy.url` or DATABASE_URL and runs its own event loop.

SQLite cannot ALTER most things, so migrations run in batch mode there (copy and swap tables).
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from postal.storage.db import create_engine
from postal.storage.tables import metadata

CLI_TIMEOUT = 60.0  # seconds: connect and each statement, when run from the command line


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_on_new_engine(url: str) -> None:
    engine = create_engine(url, pool_size=1, timeout=CLI_TIMEOUT)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL (or sqlalchemy.url) to the database to migrate")
    return url


def run_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it."""
    context.configure(url=database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if isinstance(given, Connection):
    run_on(given)
elif context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_on_new_engine(database_url()))
