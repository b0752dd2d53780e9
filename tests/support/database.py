"""Throwaway PostgreSQL databases for the tests: created, migrated, truncated, dropped.

The tests use the PostgreSQL on 127.0.0.1:5432 (trust authentication; POSTAL_TEST_PGUSER, default
`postgres`), starting the machine's cluster with pg_ctlcluster when nothing answers there. Each
test session gets a database of its own, `postal_test_<random hex>`, so that runs never see each
other's rows, and drops it (WITH (FORCE): even if a leaked connection is still open) at the end.

Database administration goes through asyncpg directly: CREATE/DROP DATABASE cannot run inside a
transaction, and these helpers should not depend on the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.storage.migrate import upgrade
from postal.storage.tables import post_tags, post_versions, posts

HOST, PORT = "127.0.0.1", 5432
USER = os.environ.get("POSTAL_TEST_PGUSER", "postgres")
ADMIN_DATABASE = "postgres"
START_TIMEOUT = 30.0  # seconds for a stopped cluster to accept connections

T = TypeVar("T")


def postgres_url(database: str) -> str:
    """The SQLAlchemy URL Postal uses for `database` on the test server."""
    return f"postgresql+asyncpg://{USER}@{HOST}:{PORT}/{database}"


def database_name(url: str) -> str:
    return url.rpartition("/")[2]


def accepts_connections(timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_postgres() -> None:
    """Start the local cluster if nothing listens on 127.0.0.1:5432 (Debian's pg_ctlcluster)."""
    if accepts_connections():
        return
    versions = sorted(Path("/etc/postgresql").iterdir(), key=lambda path: path.name)
    if not versions:
        raise RuntimeError(f"no PostgreSQL on {HOST}:{PORT} and no cluster in /etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not accepts_connections():
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not accept connections in {START_TIMEOUT}s")
        time.sleep(0.1)


async def _admin(sql: str, database: str = ADMIN_DATABASE) -> None:
    connection = await asyncpg.connect(  # type: ignore[no-untyped-call]
        host=HOST, port=PORT, user=USER, database=database
    )
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def create_database() -> str:
    """A new empty database; its URL."""
    name = f"postal_test_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    return postgres_url(name)


async def drop_database(url: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


async def truncate(url: str) -> None:
    """Empty Postal's tables and restart the ids at 1."""
    await _admin("TRUNCATE posts, post_versions RESTART IDENTITY CASCADE", database_name(url))


async def terminate_connections(database: str) -> None:
    """Kill every connection to `database`, as a server restart would."""
    await _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """A new database with nothing in it (not migrated) for one test; dropped afterwards."""
    ensure_postgres()
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


def run_in_own_loop(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on an event loop of its own, in a thread of its own, from synchronous code.

    For session fixtures: pytest-asyncio gives each test its own loop, and a thread keeps this
    loop from touching whichever one is current.
    """

    async def main() -> T:
        return await work()

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, main()).result()


@contextlib.contextmanager
def unmigrated_database() -> Iterator[str]:
    """A new empty database, from synchronous code (tests of `postal serve` and `migrate`)."""
    ensure_postgres()
    url = run_in_own_loop(create_database)
    try:
        yield url
    finally:
        run_in_own_loop(lambda: drop_database(url))


@contextlib.contextmanager
def session_database() -> Iterator[str]:
    """A migrated database for a whole test session; dropped afterwards."""
    ensure_postgres()
    url = run_in_own_loop(create_database)
    try:
        run_in_own_loop(lambda: upgrade(url))
        yield url
    finally:
        run_in_own_loop(lambda: drop_database(url))


async def row_counts(engine: AsyncEngine) -> tuple[int, int]:
    """How many posts and post versions the database holds, through the code's own engine."""
    async with engine.connect() as connection:
        post_count = (await connection.execute(select(func.count()).select_from(posts))).scalar()
        version_count = (
            await connection.execute(select(func.count()).select_from(post_versions))
        ).scalar()
    return int(post_count or 0), int(version_count or 0)


async def tag_rows_in_step(engine: AsyncEngine) -> set[tuple[int, str, str]]:
    """Checks that post_tags says what posts.tags says (each post's distinct tags, with its
    author), and returns those rows: the tag filter reads one, posts are read from the other."""
    async with engine.connect() as connection:
        rows = (await connection.execute(select(posts.c.id, posts.c.author, posts.c.tags))).all()
        expected = {(row.id, tag, row.author) for row in rows for tag in row.tags}
        found = (await connection.execute(select(post_tags))).all()
    listed = [(row.post_id, row.tag, row.author) for row in found]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == expected, (listed, expected)
    return expected
