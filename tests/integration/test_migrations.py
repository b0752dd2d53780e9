"""The migrations shipped in the package, on empty PostgreSQL and SQLite databases.

Also checks that what the migrations create is what `storage.tables` describes: the repository
queries the tables module, the databases get the migrations, and the two must not drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, select

from postal.posts.errors import DatabaseUnavailable
from postal.posts.models import ListFilter
from postal.storage.db import create_engine
from postal.storage.migrate import (
    MIGRATIONS_DIR,
    current_revision,
    downgrade,
    head_revision,
    is_current,
    pending_revision,
    upgrade,
)
from postal.storage.repository import SqlPostRepository
from postal.storage.tables import metadata, post_tags, post_versions, posts
from tests.support.database import empty_database

HEAD = "0003"
TABLES = {"posts", "post_versions", "post_tags", "deployment_keys"}


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'postal.db'}"


async def table_names(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1, timeout=5.0)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def schema_differences(url: str) -> list[object]:
    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    engine = create_engine(url, pool_size=1, timeout=5.0)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def check_lifecycle(url: str) -> None:
    """Empty -> upgraded -> downgraded to base -> upgraded again, checking the state each time."""
    assert await current_revision(url) is None
    assert await pending_revision(url) == HEAD
    assert not await is_current(url)

    await upgrade(url)
    assert await current_revision(url) == HEAD
    assert await pending_revision(url) is None
    assert await is_current(url)
    assert await table_names(url) >= TABLES
    assert await schema_differences(url) == []

    await upgrade(url)  # already at head: nothing to do
    assert await is_current(url)

    await downgrade(url)
    assert await current_revision(url) is None
    assert not await is_current(url)
    assert not TABLES & await table_names(url)

    await upgrade(url)
    assert await is_current(url)


def test_head_revision_and_shipped_files() -> None:
    assert head_revision() == HEAD
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_posts.py").is_file()


async def test_postgres_lifecycle() -> None:
    async with empty_database() as url:
        await check_lifecycle(url)


async def test_sqlite_lifecycle(tmp_path: Path) -> None:
    await check_lifecycle(sqlite_url(tmp_path))


async def test_session_database_is_current(database_url: str) -> None:
    assert await is_current(database_url)


async def test_unreachable_database_is_unavailable() -> None:
    url = "postgresql+asyncpg://postal:hunter2-secret@127.0.0.1:1/postal"
    with pytest.raises(DatabaseUnavailable) as raised:
        await is_current(url, timeout=2.0)
    assert "hunter2-secret" not in str(raised.value)


# -- 0003: the list's filters, on a database that already has posts ------------------------------

OLD_POSTS = [  # title, author, tags as a release before 0003 stored them
    ("one", "ada", ["x", "y"]),
    ("two", "bob", ["y", "y"]),  # the same tag twice: one row
    ("three", "ada", []),
    ("four", "ada", ["y", "Ünï"]),
]


async def insert_old_posts(url: str) -> list[int]:
    """Posts and version rows written at 0002, without post_tags (it did not exist)."""
    engine = create_engine(url, pool_size=1, timeout=5.0)
    now = datetime.now(UTC)
    ids = []
    try:
        async with engine.begin() as connection:
            for title, author, tags in OLD_POSTS:
                values = {"title": title, "body": "b", "author": author, "tags": tags}
                result = await connection.execute(
                    posts.insert()
                    .values(**values, version=1, created_at=now, updated_at=now)
                    .returning(posts.c.id)
                )
                post_id = result.scalar_one()
                await connection.execute(
                    post_versions.insert().values(
                        post_id=post_id, version=1, created_at=now, **values
                    )
                )
                ids.append(post_id)
    finally:
        await engine.dispose()
    return ids


async def check_backfill(url: str) -> None:
    await upgrade(url, revision="0002")
    one, two, three, four = await insert_old_posts(url)
    await upgrade(url)
    assert await schema_differences(url) == []
    engine = create_engine(url, pool_size=1, timeout=5.0)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(select(post_tags))).all()
        assert {(row.post_id, row.tag, row.author) for row in rows} == {
            (one, "x", "ada"),
            (one, "y", "ada"),
            (two, "y", "bob"),
            (four, "y", "ada"),
            (four, "Ünï", "ada"),
        }
        assert len(rows) == 5  # post two's "y" once
        repository = SqlPostRepository(engine)

        async def ids(author: str | None = None, tag: str | None = None) -> list[int]:
            page = await repository.list_page(limit=10, matching=ListFilter(author, tag))
            return [post.id for post in page]

        assert await ids(tag="y") == [four, two, one]
        assert await ids(author="ada") == [four, three, one]
        assert await ids(author="ada", tag="y") == [four, one]
        assert await ids(tag="Ünï") == [four]
        assert await ids(tag="z") == []
    finally:
        await engine.dispose()
    await downgrade(url, revision="0002")  # and back: the posts stay, the table goes
    assert "post_tags" not in await table_names(url)
    await upgrade(url)
    assert await is_current(url)


async def test_postgres_upgrade_backfills_the_tags_of_existing_posts() -> None:
    async with empty_database() as url:
        await check_backfill(url)


async def test_sqlite_upgrade_backfills_the_tags_of_existing_posts(tmp_path: Path) -> None:
    await check_backfill(sqlite_url(tmp_path))
