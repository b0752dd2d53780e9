"""Schema migrations, programmatically: what `postal serve` and `postal migrate` call.

The Alembic configuration is built here, pointing at the migrations shipped in this package, so
an installed Postal needs no alembic.ini and no working directory of any kind. The connection is
opened here on Postal's own engine (same drivers, timeouts and error mapping as at run time) and
handed to `migrations/env.py`, so the migrations run inside the caller's event loop.

`postal serve` refuses to start on a PostgreSQL that is not at the latest revision
(`is_current`), rather than migrate a shared production database on its own; the embedded SQLite
default may simply be upgraded at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from postal.storage.db import create_engine, database_errors

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
TIMEOUT: Final = 60.0  # seconds: connecting, and each statement of a migration

T = TypeVar("T")


def alembic_config() -> Config:
    """Alembic's configuration for Postal's migrations, with no file behind it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


async def upgrade(url: str, *, revision: str = "head", timeout: float = TIMEOUT) -> None:
    """Apply every migration up to `revision` (all of them by default)."""
    await _run(url, timeout, lambda connection: _command(connection, command.upgrade, revision))


async def downgrade(url: str, *, revision: str = "base", timeout: float = TIMEOUT) -> None:
    """Undo migrations down to `revision`; "base" (the default) drops Postal's tables."""
    await _run(url, timeout, lambda connection: _command(connection, command.downgrade, revision))


async def current_revision(url: str, *, timeout: float = TIMEOUT) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    return await _run(url, timeout, _current)


async def pending_revision(url: str, *, timeout: float = TIMEOUT) -> str | None:
    """The head revision when the database is not at it (behind, empty or unknown), else None."""
    head = head_revision()
    return None if await current_revision(url, timeout=timeout) == head else head


async def is_current(url: str, *, timeout: float = TIMEOUT) -> bool:
    """Whether the database is at the latest revision, so `postal serve` may use it."""
    return await pending_revision(url, timeout=timeout) is None


async def _run(url: str, timeout: float, work: Callable[[Connection], T]) -> T:
    engine = create_engine(url, pool_size=1, timeout=timeout)
    try:
        with database_errors(engine):
            async with engine.begin() as connection:
                return await connection.run_sync(work)
    finally:
        await engine.dispose()


def _command(connection: Connection, run: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    run(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
