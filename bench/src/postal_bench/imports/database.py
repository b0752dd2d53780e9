"""The PostgreSQL database `postal bench import` writes into, prepared so every run starts equal.

By default a scratch database of the bench's own, `postal_bench_<random hex>`, on the local
PostgreSQL (127.0.0.1:5432, user postgres): created, migrated, and dropped at the end (WITH
(FORCE), so a child the bench had to kill cannot keep it alive). Or the database the user named,
which must be on loopback and hold no posts: the bench empties it between runs (TRUNCATE ...
RESTART IDENTITY, so every run's ids start at 1) and leaves it empty, so it never destroys
anyone's data.

Administration goes through asyncpg directly: CREATE/DROP DATABASE cannot run inside a
transaction, and the bench should not depend on the code it measures for its set-up.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg import exceptions as pg_errors
from sqlalchemy.engine import make_url

from postal.cache import mask_url
from postal.storage.migrate import upgrade
from postal_bench.errors import BenchError
from postal_bench.loopback import require_loopback

POSTGRES_SCHEME = "postgresql+asyncpg"
ADMIN_URL = f"{POSTGRES_SCHEME}://postgres@127.0.0.1:5432/postgres"  # where scratch DBs are made
CONNECT_TIMEOUT = 10.0  # seconds
ADMIN_TIMEOUT = 300.0  # seconds per statement: a TRUNCATE or DROP of a million rows takes a while
TRUNCATE = "TRUNCATE posts, post_versions RESTART IDENTITY CASCADE"


def check_database_url(url: str) -> None:
    """A postgresql+asyncpg:// URL on loopback, or BenchError."""
    scheme = make_url(url).drivername if "://" in url else ""
    if scheme != POSTGRES_SCHEME:
        raise BenchError(f"--database-url: expected {POSTGRES_SCHEME}://..., got {mask_url(url)}")
    require_loopback(url, schemes=(POSTGRES_SCHEME,))


@asynccontextmanager
async def connect(url: str, command_timeout: float = ADMIN_TIMEOUT) -> AsyncIterator[Any]:
    """An asyncpg connection to `url`; its failures (connecting or querying) as BenchError.

    `command_timeout` (seconds) bounds each statement. Shared with `seed_db`, which inserts the
    seed bench's posts the same way.
    """
    parts = make_url(url)
    try:
        connection = await asyncpg.connect(  # type: ignore[no-untyped-call]
            host=parts.host,
            port=parts.port or 5432,
            user=parts.username,
            password=parts.password,
            database=parts.database,
            timeout=CONNECT_TIMEOUT,
            command_timeout=command_timeout,
        )
    except (OSError, pg_errors.PostgresError) as exc:
        raise BenchError(f"cannot connect to {mask_url(url)}: {exc}") from exc
    try:
        yield connection
    except pg_errors.PostgresError as exc:
        raise BenchError(f"{mask_url(url)}: {exc}") from exc
    finally:
        await connection.close()


async def _execute(url: str, sql: str) -> None:
    async with connect(url) as connection:
        await connection.execute(sql)


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    url: str
    scratch: bool  # created by the bench, dropped at the end

    @property
    def name(self) -> str:
        return make_url(self.url).database or ""

    async def empty(self) -> None:
        """No posts, no versions, ids restarting at 1."""
        await _execute(self.url, TRUNCATE)

    async def counts(self) -> tuple[int, int]:
        """(posts, post_versions) rows."""
        async with connect(self.url) as connection:
            posts = await connection.fetchval("SELECT count(*) FROM posts")
            versions = await connection.fetchval("SELECT count(*) FROM post_versions")
        return int(posts), int(versions)

    async def post_ids(self) -> list[int]:
        """Every post's id, in order: the keys the import's cache step touched."""
        async with connect(self.url) as connection:
            rows = await connection.fetch("SELECT id FROM posts ORDER BY id")
        return [int(row["id"]) for row in rows]


@asynccontextmanager
async def bench_database(url: str | None) -> AsyncIterator[BenchDatabase]:
    """A migrated database with no posts: a scratch one (None) or `url`; see the module."""
    if url is None:
        name = f"postal_bench_{secrets.token_hex(6)}"
        await _execute(ADMIN_URL, f'CREATE DATABASE "{name}"')
        scratch_url = make_url(ADMIN_URL).set(database=name)
        database = BenchDatabase(scratch_url.render_as_string(hide_password=False), True)
    else:
        check_database_url(url)
        database = BenchDatabase(url, False)
    emptied_by_us = database.scratch  # a user's database is ours to empty once found empty
    try:
        try:
            await upgrade(database.url)
        except Exception as exc:  # whatever the migration raised, the bench cannot start
            raise BenchError(f"cannot migrate {mask_url(database.url)}: {exc}") from exc
        if not database.scratch:
            if (await database.counts())[0]:
                raise BenchError(
                    f"{mask_url(database.url)} holds posts: the bench empties its database"
                    " between runs, so it only takes an empty one (or none: a scratch database"
                    " of its own)"
                )
            emptied_by_us = True
        yield database
    finally:
        if database.scratch:
            await _execute(ADMIN_URL, f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
        elif emptied_by_us:
            await database.empty()
