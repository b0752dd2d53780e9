"""BulkWriter against real databases: COPY and INSERT give the same rows, inside the caller's
transaction; SQLite takes the INSERT path. And the import's unit of work over it, which commits
only when told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.imports.ports import NewPost, PostChange
from postal.posts.models import PostContent, PostVersion
from postal.storage.bulk import BulkWriter, MethodChoice, WriteMethod, choose_method, read_posts
from postal.storage.db import create_engine
from postal.storage.import_store import SqlImportStore
from postal.storage.repository import SqlPostRepository
from postal.storage.tables import posts
from tests.support.database import row_counts, tag_rows_in_step

EARLY = datetime(2020, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
NOW = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def content(number: int, tags: tuple[str, ...] = ("a", "b")) -> PostContent:
    return PostContent(f"title {number}", f'body {number}, with "quotes" and ünïcode', "ada", tags)


@pytest.fixture(params=[WriteMethod.COPY, WriteMethod.INSERT], ids=str)
def method(request: pytest.FixtureRequest) -> WriteMethod:
    return WriteMethod(request.param)


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url, pool_size=2, timeout=5.0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def write_batches(engine: AsyncEngine, method: WriteMethod) -> list[int]:
    """Two batches in one transaction: creates, then updates of some of them and a create."""
    async with engine.connect() as connection, connection.begin():
        writer = BulkWriter(connection, method)
        await writer.start()
        first = await writer.create(
            [NewPost(content(1), EARLY), NewPost(content(2, ()), NOW), NewPost(content(3), NOW)]
        )
        current = await writer.current_versions([first[0], first[2], 999], lock=True)
        assert current == {first[0]: 1, first[2]: 1}  # 999 is no post
        changes = [PostChange(first[0], content(10)), PostChange(first[2], content(30, ("z",)))]
        await writer.update(changes, current, NOW + timedelta(hours=1))
        # the same post twice in one batch: two consecutive versions
        current = await writer.current_versions([first[0]], lock=True)
        assert current == {first[0]: 2}
        twice = [PostChange(first[0], content(11)), PostChange(first[0], content(12))]
        await writer.update(twice, current, NOW + timedelta(hours=2))
        second = await writer.create([NewPost(content(4), NOW)])
    return first + second


async def test_creates_and_updates_write_posts_and_their_versions(
    postgres_engine: AsyncEngine, method: WriteMethod
) -> None:
    ids = await write_batches(postgres_engine, method)
    assert ids == [1, 2, 3, 4]  # in the order given, from the identity's sequence
    # the tag filter's rows: each post's last tags (post 1's updated twice, post 3's replaced)
    assert await tag_rows_in_step(postgres_engine) == {
        (1, "a", "ada"),
        (1, "b", "ada"),
        (3, "z", "ada"),
        (4, "a", "ada"),
        (4, "b", "ada"),
    }
    repository = SqlPostRepository(postgres_engine)
    one = await repository.get(1)
    assert one is not None
    assert (one.title, one.version, one.tags) == ("title 12", 4, ("a", "b"))
    assert one.created_at == EARLY  # an update leaves created_at alone
    assert one.updated_at == NOW + timedelta(hours=2)
    two = await repository.get(2)
    assert two is not None
    assert (two.version, two.tags, two.created_at, two.updated_at) == (1, (), NOW, NOW)
    versions = await repository.versions(1)
    assert [(v.version, v.title) for v in versions] == [
        (1, "title 1"),
        (2, "title 10"),
        (3, "title 11"),
        (4, "title 12"),
    ]
    assert versions[0].created_at == EARLY
    assert versions[1].created_at == NOW + timedelta(hours=1)
    three = await repository.versions(3)
    assert [(v.version, v.tags) for v in three] == [(1, ("a", "b")), (2, ("z",))]
    assert await row_counts(postgres_engine) == (4, 8)
    # a post created after the import's does not reuse an id
    later = await repository.create(content(5))
    assert later.id == 5


async def test_copy_and_insert_write_the_same_rows(clean_database: str) -> None:
    seen: list[tuple[list[tuple[object, ...]], list[PostVersion]]] = []
    for method in WriteMethod:
        engine = create_engine(clean_database, pool_size=2, timeout=5.0)
        try:
            async with engine.begin() as connection:  # empty, ids from 1 again
                await connection.exec_driver_sql(
                    "TRUNCATE posts, post_versions RESTART IDENTITY CASCADE"
                )
            await write_batches(engine, method)
            async with engine.connect() as connection:
                rows = (await connection.execute(select(posts).order_by(posts.c.id))).all()
            versions = [
                version
                for post_id in (1, 2, 3, 4)
                for version in await SqlPostRepository(engine).versions(post_id)
            ]
            seen.append(([tuple(row) for row in rows], versions))
        finally:
            await engine.dispose()
    assert seen[0] == seen[1]


async def test_nothing_is_kept_when_the_transaction_rolls_back(
    postgres_engine: AsyncEngine, method: WriteMethod
) -> None:
    async with postgres_engine.connect() as connection:
        transaction = await connection.begin()
        writer = BulkWriter(connection, method)
        await writer.start()
        await writer.create([NewPost(content(1), NOW), NewPost(content(2), NOW)])
        assert await writer.current_versions([1, 2], lock=False) == {1: 1, 2: 1}
        await transaction.rollback()
    assert await row_counts(postgres_engine) == (0, 0)


async def test_read_posts_returns_those_that_exist(
    postgres_engine: AsyncEngine, method: WriteMethod
) -> None:
    await write_batches(postgres_engine, method)
    async with postgres_engine.connect() as connection:
        found = await read_posts(connection, [4, 2, 77])
    assert sorted((post.id, post.title) for post in found) == [(2, "title 2"), (4, "title 4")]


# -- the method ----------------------------------------------------------------------------------


async def test_auto_is_copy_on_postgresql_and_insert_on_sqlite(
    postgres_engine: AsyncEngine, sqlite_engine: AsyncEngine
) -> None:
    assert choose_method(postgres_engine, "auto") is WriteMethod.COPY
    assert choose_method(postgres_engine, "insert") is WriteMethod.INSERT
    assert choose_method(sqlite_engine, "auto") is WriteMethod.INSERT
    with pytest.raises(ValueError, match="COPY needs PostgreSQL"):
        choose_method(sqlite_engine, "copy")


async def test_sqlite_takes_the_insert_path(sqlite_engine: AsyncEngine) -> None:
    ids = await write_batches(sqlite_engine, WriteMethod.INSERT)
    assert {post_id for post_id, _, _ in await tag_rows_in_step(sqlite_engine)} == {1, 3, 4}
    assert ids == [1, 2, 3, 4]
    repository = SqlPostRepository(sqlite_engine)
    one = await repository.get(1)
    assert one is not None
    assert (one.title, one.version, one.created_at) == ("title 12", 4, EARLY)
    assert [v.version for v in await repository.versions(1)] == [1, 2, 3, 4]
    assert await row_counts(sqlite_engine) == (4, 8)
    async with sqlite_engine.connect() as connection:
        found = await read_posts(connection, [1, 3, 50])
    assert sorted(post.id for post in found) == [1, 3]


# -- the import's unit of work -------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["copy", "insert"])
async def test_a_unit_of_work_commits_only_when_told(
    postgres_engine: AsyncEngine, choice: MethodChoice
) -> None:
    store = SqlImportStore(postgres_engine, choice)
    assert store.method == choice
    async with store.unit_of_work() as uow:
        await uow.create([NewPost(content(1), NOW)])
    assert await row_counts(postgres_engine) == (0, 0)  # left without commit(): rolled back
    async with store.unit_of_work() as uow:
        [created] = await uow.create([NewPost(content(2), NOW)])
        current = await uow.current_versions([created], lock=True)
        await uow.update([PostChange(created, content(3))], current, NOW)
        await uow.commit()
    assert await row_counts(postgres_engine) == (1, 2)
    [post] = await store.read_posts([created, 999])
    assert (post.id, post.title, post.version) == (created, "title 3", 2)
    with pytest.raises(RuntimeError, match="outside its `async with` block"):
        await uow.create([NewPost(content(4), NOW)])
    with pytest.raises(RuntimeError, match="entered once"):
        await uow.__aenter__()


async def test_a_unit_of_work_left_with_an_error_rolls_back(sqlite_engine: AsyncEngine) -> None:
    store = SqlImportStore(sqlite_engine)
    assert store.method == WriteMethod.INSERT

    async def write_then_fail() -> None:
        async with store.unit_of_work() as uow:
            await uow.create([NewPost(content(1), NOW)])
            raise LookupError("the caller's")

    with pytest.raises(LookupError, match="the caller's"):
        await write_then_fail()
    assert await row_counts(sqlite_engine) == (0, 0)
    with pytest.raises(ValueError, match="COPY needs PostgreSQL"):
        SqlImportStore(sqlite_engine, "copy")
