"""Many posts written in batches inside one transaction the caller holds: the bulk import's SQL.

An import's unit of work (`import_store.SqlImportUnitOfWork`) opens one transaction for the whole
file and hands each batch to a `BulkWriter` on that connection; nothing here commits. A batch is a
few statements whatever its size, in one of two ways (`WriteMethod`), the same rows either way:

- `COPY` (PostgreSQL only): the new posts' ids are taken from the identity's sequence up front
  (`nextval` over `generate_series`), then posts and version rows go in with asyncpg's binary
  `copy_records_to_table`, on the driver connection under the same SQLAlchemy connection, so
  inside the same transaction.
- `INSERT`: multi-row INSERTs (SQLAlchemy's insertmanyvalues), the new ids coming back through
  `RETURNING` in the order the rows were given (`sort_by_parameter_order`). PostgreSQL and SQLite.

`auto` picks COPY on PostgreSQL, which measured about twice as fast (`postal bench import`:
100,000 rows of ~500 bytes; the figures are in docs/benchmarks.md), and INSERT on SQLite.

Each post's tags go into `post_tags` with it (the tag filter's table), by the batch's method;
an update replaces the rows of the posts it changed.

Updates of existing posts go the same way with both methods: the batch's rows are locked and
their versions read first (`current_versions`: `SELECT ... FOR UPDATE` in id order, so two
imports cannot deadlock within one batch), then one executemany UPDATE, each post moving to its
version + 1. The locks are held to the end of the transaction, and a later batch locks other
rows: two imports that update the same posts in different orders can deadlock across batches.
PostgreSQL then fails one of them, which raises `ImportConflict` (the caller rolls back).
SQLite has no row locks: `start()` takes its database-wide write lock at the beginning instead,
so no other writer can move a version between the read and the write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import BigInteger, bindparam, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from postal.imports.ports import ImportConflict, NewPost, PostChange
from postal.posts.models import Post, PostContent

# The repository's columns and row mappings: a post is read and written here as it is there.
from postal.storage.repository import POST_COLUMNS, content_values, post_from_row, tag_rows
from postal.storage.tables import post_tags, post_versions, posts


class WriteMethod(StrEnum):
    COPY = "copy"
    INSERT = "insert"


MethodChoice = Literal["auto", "copy", "insert"]

# What `auto` uses on PostgreSQL: the faster of the two as measured (see the module docstring).
POSTGRES_DEFAULT = WriteMethod.COPY

_POST_COPY_COLUMNS = (
    "id",
    "title",
    "body",
    "author",
    "tags",
    "version",
    "created_at",
    "updated_at",
)
_VERSION_COPY_COLUMNS = ("post_id", "version", "title", "body", "author", "tags", "created_at")
_TAG_COPY_COLUMNS = ("post_id", "tag", "author")

# The sequence is looked up once (MATERIALIZED): called on every row, pg_get_serial_sequence made
# this take 7 ms per 1,000 ids instead of 1 ms.
_TAKE_IDS = text(
    "WITH sequence AS MATERIALIZED"
    " (SELECT pg_get_serial_sequence('posts', 'id')::regclass AS name)"
    " SELECT array_agg(nextval(sequence.name)) FROM sequence, generate_series(1, :n)"
)

# Takes SQLite's write lock (a write statement does, even one that matches no row), so that the
# transaction is a writer from its first statement on; see the module docstring.
_SQLITE_WRITE_LOCK = text("UPDATE posts SET version = version WHERE 0")


def choose_method(engine: AsyncEngine, requested: MethodChoice) -> WriteMethod:
    """The method for `engine`; COPY asked of a database other than PostgreSQL is a ValueError."""
    postgres = engine.dialect.name == "postgresql"
    if requested == "auto":
        return POSTGRES_DEFAULT if postgres else WriteMethod.INSERT
    method = WriteMethod(requested)
    if method is WriteMethod.COPY and not postgres:
        raise ValueError(f"COPY needs PostgreSQL, not {engine.dialect.name}: use insert or auto")
    return method


# PostgreSQL's deadlock_detected: it failed this transaction to free another that waited on it.
_DEADLOCK = "40P01"


class BulkWriter:
    """The batched writes of one import, on the caller's connection inside its transaction."""

    def __init__(self, connection: AsyncConnection, method: WriteMethod) -> None:
        self._connection = connection
        self._method = method
        self._postgres = connection.dialect.name == "postgresql"
        if method is WriteMethod.COPY and not self._postgres:
            raise ValueError("COPY needs PostgreSQL")

    async def start(self) -> None:
        """Begin the transaction on the server now.

        PostgreSQL: SQLAlchemy's asyncpg adapter sends BEGIN with the first statement it runs;
        a COPY sent straight to the driver before that would run (and commit) on its own.
        SQLite: take the write lock (see the module docstring).
        """
        await self._connection.execute(text("SELECT 1") if self._postgres else _SQLITE_WRITE_LOCK)

    async def current_versions(self, post_ids: Sequence[int], *, lock: bool) -> dict[int, int]:
        """The current version of each of `post_ids` that exists; absent ids are not posts.

        `lock`: lock those rows until the transaction ends (PostgreSQL; SQLite holds its write
        lock already), as a batch that updates them needs.
        """
        if not post_ids:
            return {}
        query = select(posts.c.id, posts.c.version).where(_id_among(self._connection, post_ids))
        if lock:
            query = query.order_by(posts.c.id).with_for_update()
        try:
            rows = (await self._connection.execute(query)).all()
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != _DEADLOCK:
                raise
            raise ImportConflict(
                "another import was updating some of the same posts, in another order (deadlock"
                " detected); nothing was imported: run it again"
            ) from error
        return {row.id: row.version for row in rows}

    async def create(self, new: Sequence[NewPost]) -> list[int]:
        """Insert `new` as version 1 each, with their version rows; their ids, in order."""
        if not new:
            return []
        if self._method is WriteMethod.COPY:
            return await self._copy_new(new)
        rows = [
            {
                **content_values(post.content),
                "version": 1,
                "created_at": post.created_at,
                "updated_at": post.created_at,
            }
            for post in new
        ]
        statement = insert(posts).returning(posts.c.id, sort_by_parameter_order=True)
        result = await self._connection.execute(statement, rows)
        ids = [row.id for row in result.all()]
        await self._add_versions(
            (post_id, 1, post.content, post.created_at)
            for post_id, post in zip(ids, new, strict=True)
        )
        await self._add_tags(zip(ids, (post.content for post in new), strict=True))
        return ids

    async def _copy_new(self, new: Sequence[NewPost]) -> list[int]:
        ids = await self._take_ids(len(new))
        contents = [_content_record(post.content) for post in new]  # encoded once, for both
        posts_records = [
            (post_id, *content, 1, post.created_at, post.created_at)
            for post_id, content, post in zip(ids, contents, new, strict=True)
        ]
        await self._copy("posts", _POST_COPY_COLUMNS, posts_records)
        version_records = [
            (post_id, 1, *content, post.created_at)
            for post_id, content, post in zip(ids, contents, new, strict=True)
        ]
        await self._copy("post_versions", _VERSION_COPY_COLUMNS, version_records)
        await self._add_tags(zip(ids, (post.content for post in new), strict=True))
        return ids

    async def update(
        self, changes: Sequence[PostChange], current: Mapping[int, int], at: datetime
    ) -> None:
        """Make each change its post's next version (from `current`, read under lock by
        `current_versions`), `at` being its updated_at and the version row's created_at. The
        posts' created_at stay as they are."""
        if not changes:
            return
        versions = dict(current)
        rows: list[dict[str, Any]] = []
        added: list[tuple[int, int, PostContent, datetime]] = []
        for change in changes:
            # Counted here rather than by `version + 1` in SQL, so the version row knows it too;
            # the same post twice in one batch still gets two consecutive versions.
            version = versions[change.post_id] + 1
            versions[change.post_id] = version
            content = change.content
            rows.append(
                {
                    "b_id": change.post_id,
                    "b_title": content.title,
                    "b_body": content.body,
                    "b_author": content.author,
                    "b_tags": list(content.tags),
                    "b_version": version,
                }
            )
            added.append((change.post_id, version, content, at))
        statement = (
            update(posts)
            .where(posts.c.id == bindparam("b_id"))
            .values(
                title=bindparam("b_title"),
                body=bindparam("b_body"),
                author=bindparam("b_author"),
                tags=bindparam("b_tags", type_=posts.c.tags.type),
                version=bindparam("b_version"),
                updated_at=at,
            )
        )
        await self._connection.execute(statement, rows)
        await self._add_versions(added)
        # The tags each post ends the batch with (a post changed twice: its last change's).
        final = {change.post_id: change.content for change in changes}
        await self._connection.execute(
            delete(post_tags).where(_id_among(self._connection, list(final), post_tags.c.post_id))
        )
        await self._add_tags(final.items())

    # -- the pieces -------------------------------------------------------------------------

    async def _take_ids(self, count: int) -> list[int]:
        ids: list[int] = (await self._connection.execute(_TAKE_IDS, {"n": count})).scalar_one()
        return ids

    async def _add_tags(self, contents: Iterable[tuple[int, PostContent]]) -> None:
        """The post_tags rows of posts that have none yet, by COPY or INSERT as the rest."""
        rows = [row for post_id, content in contents for row in tag_rows(post_id, content)]
        if not rows:
            return
        if self._method is WriteMethod.COPY:
            records = [(row["post_id"], row["tag"], row["author"]) for row in rows]
            await self._copy("post_tags", _TAG_COPY_COLUMNS, records)
            return
        await self._connection.execute(insert(post_tags), rows)

    async def _add_versions(
        self, versions: Iterable[tuple[int, int, PostContent, datetime]]
    ) -> None:
        if self._method is WriteMethod.COPY:
            records = [
                (post_id, version, *_content_record(content), at)
                for post_id, version, content, at in versions
            ]
            await self._copy("post_versions", _VERSION_COPY_COLUMNS, records)
            return
        rows = [
            {"post_id": post_id, "version": version, "created_at": at, **content_values(content)}
            for post_id, version, content, at in versions
        ]
        if rows:
            await self._connection.execute(insert(post_versions), rows)

    async def _copy(
        self, table: str, columns: Sequence[str], records: list[tuple[Any, ...]]
    ) -> None:
        """Binary COPY through asyncpg, on the connection (and transaction) SQLAlchemy holds."""
        if not records:
            return
        raw = await self._connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if not driver.is_in_transaction():  # `start()` not called: this would commit by itself
            raise RuntimeError("COPY outside the import's transaction")
        await driver.copy_records_to_table(table, records=records, columns=columns)


async def read_posts(connection: AsyncConnection, post_ids: Sequence[int]) -> list[Post]:
    """The posts among `post_ids` that exist, in no particular order (for warming the cache)."""
    if not post_ids:
        return []
    query = select(*POST_COLUMNS).where(_id_among(connection, post_ids))
    rows = (await connection.execute(query)).all()
    return [post_from_row(row) for row in rows]


def _id_among(
    connection: AsyncConnection, post_ids: Sequence[int], column: ColumnElement[int] = posts.c.id
) -> ColumnElement[bool]:
    if connection.dialect.name == "postgresql":
        # One array parameter: one prepared statement whatever the batch's size.
        ids = bindparam("ids", list(post_ids), type_=ARRAY(BigInteger))
        return column == ids.any_()
    return column.in_(post_ids)


def _content_record(content: PostContent) -> tuple[str, str, str, str]:
    """title, body, author, tags as COPY sends them (asyncpg takes `json` columns as text)."""
    return content.title, content.body, content.author, json.dumps(list(content.tags))
