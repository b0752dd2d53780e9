"""Posts in SQL: `SqlPostRepository`, the service's `PostRepository` (`posts.ports`) on SQLAlchemy.

Each write is one transaction whose first statement is the write itself, so the version check is
atomic without locks taken in advance: `UPDATE posts ... WHERE id = :id AND version = :expected
RETURNING ...` either changes the row or changes nothing, and of two writers holding the same
expected version exactly one wins (PostgreSQL re-checks the WHERE after waiting for the winner's
row lock; SQLite has one writer at a time). Only when nothing changed does a second query find out
why: no such post, or another version.

Reads are single SELECTs run without BEGIN/COMMIT (autocommit): one statement already sees one
consistent snapshot, and on PostgreSQL the explicit transaction would cost two more round trips
on the hot path, `get`. On PostgreSQL `get`, every cache miss's query, goes further: it is sent
with the driver's own `fetchrow` (`driver.driver_fetchrow`), at a third of the CPU of
SQLAlchemy's `execute`, unless something listens to the engine's statements (the tracing's
spans), which that path would go around. Its SQL is `_GET_POST` compiled for asyncpg, so the
columns are named in one place.

A post's tags are also rows of `post_tags`, which the tag filter reads: every write here puts
them in step in its own transaction (`replace_tags`), as the import's bulk writes do.

Database outages become `DatabaseUnavailable` in one place, `db`: reads through `database_errors`,
writes through `write_transaction`, whose outages before the COMMIT was sent are `NothingWritten`
(a `DatabaseUnavailable` that says the write cannot have landed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeAlias

from sqlalchemy import Row, Select, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postal.posts.errors import PostNotFound, VersionConflict, VersionNotFound
from postal.posts.models import (
    NO_FILTER,
    ListFilter,
    Post,
    PostContent,
    PostVersion,
    VersionSummary,
)
from postal.storage.db import database_errors, write_transaction
from postal.storage.driver import driver_fetchrow, listens_to_statements
from postal.storage.tables import post_tags, post_versions, posts

AnyRow: TypeAlias = Row[*tuple[Any, ...]]

POST_COLUMNS = (
    posts.c.id,
    posts.c.title,
    posts.c.body,
    posts.c.author,
    posts.c.tags,
    posts.c.version,
    posts.c.created_at,
    posts.c.updated_at,
)
_VERSION_COLUMNS = (
    post_versions.c.post_id,
    post_versions.c.version,
    post_versions.c.title,
    post_versions.c.body,
    post_versions.c.author,
    post_versions.c.tags,
    post_versions.c.created_at,
)

# A list of versions leaves the body out (`VersionSummary`): not even read from the database.
_SUMMARY_COLUMNS = tuple(column for column in _VERSION_COLUMNS if column.name != "body")

# `get`, every cache miss's query, built once: SQLAlchemy memoizes a statement's cache key on the
# statement object, so building it per call (and its `id = ...` clause) cost a miss about 5% of
# its CPU in a profile, for the same SQL each time.
_GET_POST = select(*POST_COLUMNS).where(posts.c.id == bindparam("post_id"))
# The same for the driver (`driver.driver_fetchrow`): "... WHERE posts.id = $1::BIGINT".
_ASYNCPG = asyncpg_dialect()  # type: ignore[no-untyped-call]
_GET_POST_DRIVER = str(_GET_POST.compile(dialect=_ASYNCPG))


class SqlPostRepository:
    """`PostRepository` on SQLAlchemy Core: PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Decided once: the tracing attaches its listeners before the repository is built.
        self._driver_get = engine.dialect.name == "postgresql" and not listens_to_statements(engine)

    def __repr__(self) -> str:
        return f"<SqlPostRepository {self._engine.url.render_as_string(hide_password=True)}>"

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with database_errors(self._engine):
            async with self._reads.connect() as connection:
                yield connection

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self._engine) as connection:
            yield connection

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, post_id: int) -> Post | None:
        if self._driver_get:
            record = await driver_fetchrow(self._engine, _GET_POST_DRIVER, post_id)
            return None if record is None else post_from_record(record)
        async with self._read() as connection:
            result = await connection.execute(_GET_POST, {"post_id": post_id})
            row = result.one_or_none()
        return None if row is None else post_from_row(row)

    async def list_page(
        self, *, limit: int, before_id: int | None = None, matching: ListFilter = NO_FILTER
    ) -> list[Post]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        query = page_query(matching, before_id).limit(limit)
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
        return [post_from_row(row) for row in rows]

    async def ids_page(self, *, limit: int, before_id: int | None = None) -> list[int]:
        """The ids of `list_page`, alone: newest first, at most `limit` below `before_id`."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        query = select(posts.c.id).order_by(posts.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(posts.c.id < before_id)
        async with self._read() as connection:
            return list((await connection.execute(query)).scalars())

    async def count(self) -> int:
        """How many posts there are."""
        async with self._read() as connection:
            return int(
                (await connection.execute(select(func.count()).select_from(posts))).scalar_one()
            )

    async def versions(self, post_id: int) -> list[PostVersion]:
        query = (
            select(*_VERSION_COLUMNS)
            .where(post_versions.c.post_id == post_id)
            .order_by(post_versions.c.version)
        )
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
        if not rows:  # every post has its version 1 row, deleted only with the post
            raise PostNotFound(post_id)
        return [_version(row) for row in rows]

    async def version_page(
        self, post_id: int, *, limit: int, after_version: int | None = None
    ) -> list[VersionSummary]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        query = (
            select(*_SUMMARY_COLUMNS)
            .where(post_versions.c.post_id == post_id)
            .order_by(post_versions.c.version)
            .limit(limit)
        )
        if after_version is not None:
            query = query.where(post_versions.c.version > after_version)
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
            if not rows:  # past the last version, or no such post: tell which
                await _current_version(connection, post_id)  # raises PostNotFound if none
        return [_summary(row) for row in rows]

    async def version(self, post_id: int, version: int) -> PostVersion:
        async with self._read() as connection:
            row = await _version_row(connection, post_id, version)
            if row is None:
                await _current_version(connection, post_id)  # raises PostNotFound if none
                raise VersionNotFound(post_id, version)
        return _version(row)

    # -- writes ---------------------------------------------------------------------------------

    async def create(self, content: PostContent, *, created_at: datetime | None = None) -> Post:
        now = _now() if created_at is None else _aware(created_at)
        async with self._write() as connection:
            result = await connection.execute(
                insert(posts)
                .values(**content_values(content), version=1, created_at=now, updated_at=now)
                .returning(*POST_COLUMNS)
            )
            post = post_from_row(result.one())
            await _insert_version(connection, post.id, 1, content, now)
            rows = tag_rows(post.id, content)
            if rows:
                await connection.execute(insert(post_tags), rows)
        return post

    async def update(
        self, post_id: int, content: PostContent, *, expected_version: int | None
    ) -> Post:
        async with self._write() as connection:
            return await _new_version(connection, post_id, content, expected_version)

    async def restore(self, post_id: int, version: int, *, expected_version: int | None) -> Post:
        async with self._write() as connection:
            # Version rows never change, so reading this one before the conditional UPDATE
            # cannot make the restore act on stale content; the UPDATE still checks the version.
            row = await _version_row(connection, post_id, version)
            if row is None:
                await _current_version(connection, post_id)
                raise VersionNotFound(post_id, version)
            content = _version(row).content
            return await _new_version(connection, post_id, content, expected_version)

    async def delete(self, post_id: int, *, expected_version: int | None) -> None:
        """Removes the post and, by the foreign key's cascade, all its versions."""
        statement = delete(posts).where(posts.c.id == post_id)
        if expected_version is not None:
            statement = statement.where(posts.c.version == expected_version)
        async with self._write() as connection:
            result = await connection.execute(statement.returning(posts.c.id))
            if result.one_or_none() is None:
                await _raise_for_missed_write(connection, post_id, expected_version)


# -- statements shared by the methods -----------------------------------------------------------


def page_query(matching: ListFilter, before_id: int | None) -> Select[Any]:
    """Newest first below `before_id`, each filter walking an index of its own backwards: the
    whole list the primary key; by author `ix_posts_author_id`; by tag `post_tags`' index on
    (tag, post_id); by both its index on (tag, author, post_id). Posts are then read by id."""
    if matching.tag is None:
        query = select(*POST_COLUMNS).order_by(posts.c.id.desc())
        if matching.author is not None:
            query = query.where(posts.c.author == matching.author)
        if before_id is not None:
            query = query.where(posts.c.id < before_id)
        return query
    query = (
        select(*POST_COLUMNS)
        .select_from(post_tags.join(posts, posts.c.id == post_tags.c.post_id))
        .where(post_tags.c.tag == matching.tag)
        .order_by(post_tags.c.post_id.desc())
    )
    if matching.author is not None:
        query = query.where(post_tags.c.author == matching.author)
    if before_id is not None:
        query = query.where(post_tags.c.post_id < before_id)
    return query


def tag_rows(post_id: int, content: PostContent) -> list[dict[str, Any]]:
    """The post_tags rows of a post with `content`: each distinct tag once, with the author."""
    return [
        {"post_id": post_id, "tag": tag, "author": content.author}
        for tag in dict.fromkeys(content.tags)
    ]


async def replace_tags(connection: AsyncConnection, post_id: int, content: PostContent) -> None:
    """Make post_tags say `content`'s tags for the post, in the write's transaction."""
    await connection.execute(delete(post_tags).where(post_tags.c.post_id == post_id))
    rows = tag_rows(post_id, content)
    if rows:
        await connection.execute(insert(post_tags), rows)


async def _new_version(
    connection: AsyncConnection, post_id: int, content: PostContent, expected_version: int | None
) -> Post:
    """Make `content` current as version+1 (if the post is at `expected_version`), with its row."""
    now = _now()
    statement = update(posts).where(posts.c.id == post_id)
    if expected_version is not None:
        statement = statement.where(posts.c.version == expected_version)
    statement = statement.values(
        **content_values(content), version=posts.c.version + 1, updated_at=now
    )
    result = await connection.execute(statement.returning(*POST_COLUMNS))
    row = result.one_or_none()
    if row is None:
        await _raise_for_missed_write(connection, post_id, expected_version)
    post = post_from_row(row)
    await _insert_version(connection, post_id, post.version, content, now)
    await replace_tags(connection, post_id, content)
    return post


async def _raise_for_missed_write(
    connection: AsyncConnection, post_id: int, expected_version: int | None
) -> NoReturn:
    """A conditional write changed nothing: the post is gone, or at another version."""
    if expected_version is None:
        raise PostNotFound(post_id)
    current = await _current_version(connection, post_id)  # PostNotFound if gone
    raise VersionConflict(post_id, expected_version, current)


async def _current_version(connection: AsyncConnection, post_id: int) -> int:
    result = await connection.execute(select(posts.c.version).where(posts.c.id == post_id))
    current = result.scalar_one_or_none()
    if current is None:
        raise PostNotFound(post_id)
    return int(current)


async def _version_row(connection: AsyncConnection, post_id: int, version: int) -> AnyRow | None:
    result = await connection.execute(
        select(*_VERSION_COLUMNS).where(
            post_versions.c.post_id == post_id, post_versions.c.version == version
        )
    )
    return result.one_or_none()


async def _insert_version(
    connection: AsyncConnection, post_id: int, version: int, content: PostContent, at: datetime
) -> None:
    await connection.execute(
        insert(post_versions).values(
            post_id=post_id, version=version, created_at=at, **content_values(content)
        )
    )


def content_values(content: PostContent) -> dict[str, Any]:
    return {
        "title": content.title,
        "body": content.body,
        "author": content.author,
        "tags": list(content.tags),
    }


def post_from_row(row: AnyRow) -> Post:
    return Post(
        id=row.id,
        title=row.title,
        body=row.body,
        author=row.author,
        tags=tuple(row.tags),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def post_from_record(record: Mapping[str, Any]) -> Post:
    """`post_from_row` for a row the driver returned (`driver_fetchrow`): by column name, the
    times in UTC as `UtcDateTime` gives them, the tags decoded by the engine's JSON codec."""
    return Post(
        id=record["id"],
        title=record["title"],
        body=record["body"],
        author=record["author"],
        tags=tuple(record["tags"]),
        version=record["version"],
        created_at=record["created_at"].astimezone(UTC),
        updated_at=record["updated_at"].astimezone(UTC),
    )


def _summary(row: AnyRow) -> VersionSummary:
    return VersionSummary(
        post_id=row.post_id,
        version=row.version,
        title=row.title,
        author=row.author,
        tags=tuple(row.tags),
        created_at=row.created_at,
    )


def _version(row: AnyRow) -> PostVersion:
    return PostVersion(
        post_id=row.post_id,
        version=row.version,
        title=row.title,
        body=row.body,
        author=row.author,
        tags=tuple(row.tags),
        created_at=row.created_at,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"created_at must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC)
