"""SqlPostRepository against real databases: PostgreSQL, and SQLite where it costs little.

Each test gets empty tables (ids from 1). The concurrency tests run the writers at once on
separate pooled connections, so the database, not the test, decides who wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.posts.errors import DatabaseUnavailable, PostNotFound, VersionConflict, VersionNotFound
from postal.posts.models import ListFilter, Post, PostContent
from postal.posts.ports import PostRepository
from postal.storage.db import create_engine, database_errors
from postal.storage.driver import driver_fetchrow
from postal.storage.repository import SqlPostRepository, page_query
from tests.support.database import tag_rows_in_step, terminate_connections

FIRST = PostContent(title="First", body="Hello.", author="ada", tags=("intro", "news"))
SECOND = PostContent(title="Second", body="Edited.", author="ada", tags=())
THIRD = PostContent(title="Third", body="Again.", author="grace", tags=("x",))
PASSWORD = "s3cret-Pa55"


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "clean_database" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=10, timeout=5.0)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def repo(engine: AsyncEngine) -> PostRepository:
    """Typed as the protocol: the tests use only what the service may use."""
    return SqlPostRepository(engine)


def assert_utc(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


# -- create, get -------------------------------------------------------------------------------


async def test_create_then_get(repo: PostRepository) -> None:
    before = datetime.now(UTC)
    post = await repo.create(FIRST)
    assert (post.id, post.version, post.content) == (1, 1, FIRST)
    assert post.created_at == post.updated_at
    assert before <= post.created_at <= datetime.now(UTC)
    assert await repo.get(post.id) == post
    [first] = await repo.versions(post.id)
    assert (first.version, first.content, first.created_at) == (1, FIRST, post.created_at)


async def test_get_missing_is_none(repo: PostRepository) -> None:
    assert await repo.get(1) is None


async def test_datetimes_are_aware_utc(repo: PostRepository) -> None:
    created = await repo.create(FIRST)
    updated = await repo.update(created.id, SECOND, expected_version=1)
    fetched = await repo.get(created.id)
    assert fetched is not None
    versions = await repo.versions(created.id)
    for moment in (fetched.created_at, fetched.updated_at, *(v.created_at for v in versions)):
        assert_utc(moment)
    assert fetched.updated_at == updated.updated_at > fetched.created_at


async def test_create_at_a_given_time_keeps_the_instant(repo: PostRepository) -> None:
    tokyo = timezone(timedelta(hours=9))
    when = datetime(2020, 5, 17, 9, 30, 15, 123456, tzinfo=tokyo)
    post = await repo.create(FIRST, created_at=when)
    fetched = await repo.get(post.id)
    assert fetched is not None
    assert fetched.created_at == fetched.updated_at == when
    assert fetched.created_at.hour == 0  # shown in UTC
    assert_utc(fetched.created_at)
    with pytest.raises(ValueError, match="timezone-aware"):
        await repo.create(FIRST, created_at=datetime(2020, 5, 17))


async def test_ids_are_never_reused_after_delete(repo: PostRepository) -> None:
    first, second = await repo.create(FIRST), await repo.create(SECOND)
    await repo.delete(second.id, expected_version=None)  # the highest id: the one to reuse
    await repo.delete(first.id, expected_version=None)
    third = await repo.create(THIRD)
    assert third.id == 3


# -- update --------------------------------------------------------------------------------------


async def test_update_makes_a_new_version(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    updated = await repo.update(post.id, SECOND, expected_version=1)
    assert (updated.id, updated.version, updated.content) == (post.id, 2, SECOND)
    assert updated.created_at == post.created_at
    assert updated.updated_at > post.updated_at
    assert await repo.get(post.id) == updated
    versions = await repo.versions(post.id)
    assert [(v.version, v.content) for v in versions] == [(1, FIRST), (2, SECOND)]
    assert versions[1].created_at == updated.updated_at


async def test_update_without_expected_version(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=None)
    updated = await repo.update(post.id, THIRD, expected_version=None)
    assert (updated.version, updated.content) == (3, THIRD)


async def test_update_at_another_version_conflicts(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=1)
    with pytest.raises(VersionConflict) as raised:
        await repo.update(post.id, THIRD, expected_version=1)
    assert (raised.value.post_id, raised.value.expected, raised.value.current) == (post.id, 1, 2)
    current = await repo.get(post.id)
    assert current is not None
    assert (current.version, current.content) == (2, SECOND)
    assert len(await repo.versions(post.id)) == 2


@pytest.mark.parametrize("expected", [None, 1])
async def test_update_missing_post(repo: PostRepository, expected: int | None) -> None:
    with pytest.raises(PostNotFound) as raised:
        await repo.update(42, FIRST, expected_version=expected)
    assert raised.value.post_id == 42


async def test_concurrent_updates_exactly_one_wins(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    contents = [PostContent(f"Edit {n}", "body", "ada") for n in range(8)]
    results = await asyncio.gather(
        *(repo.update(post.id, content, expected_version=1) for content in contents),
        return_exceptions=True,
    )
    winners = [result for result in results if isinstance(result, Post)]
    losers = [result for result in results if isinstance(result, VersionConflict)]
    assert len(winners) == 1, results
    assert len(losers) == len(contents) - 1, results
    assert all((loser.expected, loser.current) == (1, 2) for loser in losers)
    assert await repo.get(post.id) == winners[0]
    versions = await repo.versions(post.id)
    assert [(v.version, v.content) for v in versions] == [(1, FIRST), (2, winners[0].content)]


async def test_concurrent_unconditional_updates_all_apply(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await asyncio.gather(*(repo.update(post.id, SECOND, expected_version=None) for _ in range(5)))
    assert [v.version for v in await repo.versions(post.id)] == [1, 2, 3, 4, 5, 6]


# -- delete --------------------------------------------------------------------------------------


async def test_delete_removes_the_post_and_its_versions(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=1)
    other = await repo.create(THIRD)
    await repo.delete(post.id, expected_version=2)
    assert await repo.get(post.id) is None
    with pytest.raises(PostNotFound):
        await repo.versions(post.id)
    with pytest.raises(PostNotFound):
        await repo.version(post.id, 1)
    assert await repo.get(other.id) == other
    assert len(await repo.versions(other.id)) == 1


async def test_delete_at_another_version_conflicts(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    with pytest.raises(VersionConflict) as raised:
        await repo.delete(post.id, expected_version=3)
    assert (raised.value.expected, raised.value.current) == (3, 1)
    assert await repo.get(post.id) == post


@pytest.mark.parametrize("expected", [None, 1])
async def test_delete_missing_post(repo: PostRepository, expected: int | None) -> None:
    with pytest.raises(PostNotFound):
        await repo.delete(7, expected_version=expected)


# -- versions, restore ---------------------------------------------------------------------------


async def test_versions_are_in_numeric_order(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    for n in range(2, 13):  # past 9, so "10" < "2" would show
        await repo.update(post.id, PostContent(f"v{n}", "body", "ada"), expected_version=n - 1)
    versions = await repo.versions(post.id)
    assert [v.version for v in versions] == list(range(1, 13))
    assert [v.title for v in versions[1:]] == [f"v{n}" for n in range(2, 13)]


async def test_version(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=1)
    first = await repo.version(post.id, 1)
    assert (first.post_id, first.version, first.content) == (post.id, 1, FIRST)
    assert (await repo.version(post.id, 2)).content == SECOND
    with pytest.raises(VersionNotFound) as raised:
        await repo.version(post.id, 3)
    assert (raised.value.post_id, raised.value.version) == (post.id, 3)
    with pytest.raises(PostNotFound):
        await repo.version(99, 1)


async def test_versions_of_missing_post(repo: PostRepository) -> None:
    with pytest.raises(PostNotFound):
        await repo.versions(5)


async def test_restore_makes_an_old_version_current_as_a_new_one(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=1)
    restored = await repo.restore(post.id, 1, expected_version=2)
    assert (restored.version, restored.content) == (3, FIRST)
    assert await repo.get(post.id) == restored
    versions = await repo.versions(post.id)
    assert [(v.version, v.content) for v in versions] == [(1, FIRST), (2, SECOND), (3, FIRST)]
    again = await repo.restore(post.id, 2, expected_version=None)
    assert (again.version, again.content) == (4, SECOND)


async def test_restore_errors(repo: PostRepository) -> None:
    post = await repo.create(FIRST)
    await repo.update(post.id, SECOND, expected_version=1)
    with pytest.raises(VersionConflict) as raised:
        await repo.restore(post.id, 1, expected_version=1)
    assert (raised.value.expected, raised.value.current) == (1, 2)
    with pytest.raises(VersionNotFound):
        await repo.restore(post.id, 9, expected_version=2)
    with pytest.raises(PostNotFound):
        await repo.restore(404, 1, expected_version=None)
    assert len(await repo.versions(post.id)) == 2


# -- list_page -----------------------------------------------------------------------------------


async def test_list_page_newest_first(repo: PostRepository) -> None:
    assert await repo.list_page(limit=10, before_id=None) == []
    posts = [await repo.create(PostContent(f"p{n}", "b", "a")) for n in range(5)]
    newest_first = posts[::-1]
    assert await repo.list_page(limit=10, before_id=None) == newest_first
    assert await repo.list_page(limit=2, before_id=None) == newest_first[:2]
    assert await repo.list_page(limit=2, before_id=posts[3].id) == newest_first[2:4]
    assert await repo.list_page(limit=10, before_id=posts[0].id) == []
    with pytest.raises(ValueError, match="limit"):
        await repo.list_page(limit=0, before_id=None)


async def test_list_page_is_stable_under_concurrent_inserts(repo: PostRepository) -> None:
    existing = {(await repo.create(PostContent(f"p{n}", "b", "a"))).id for n in range(10)}
    seen: list[int] = []
    before_id: int | None = None
    while True:
        page = await repo.list_page(limit=3, before_id=before_id)
        if not page:
            break
        seen += [post.id for post in page]
        before_id = page[-1].id
        await repo.create(PostContent("inserted meanwhile", "b", "a"))  # would shift an offset
    assert len(seen) == len(set(seen)), seen
    assert set(seen) == existing


async def test_list_page_with_a_deleted_cursor(repo: PostRepository) -> None:
    posts = [await repo.create(PostContent(f"p{n}", "b", "a")) for n in range(4)]
    await repo.delete(posts[2].id, expected_version=None)
    page = await repo.list_page(limit=10, before_id=posts[2].id)
    assert [post.id for post in page] == [posts[1].id, posts[0].id]


async def test_ids_page_is_list_page_without_the_posts(engine: AsyncEngine) -> None:
    repo = SqlPostRepository(engine)
    assert (await repo.ids_page(limit=10), await repo.count()) == ([], 0)
    posts = [await repo.create(PostContent(f"p{n}", "b", "a")) for n in range(5)]
    await repo.delete(posts[1].id, expected_version=None)
    for limit, before_id in [(10, None), (2, None), (2, posts[3].id), (10, posts[0].id)]:
        page = await repo.list_page(limit=limit, before_id=before_id)
        assert await repo.ids_page(limit=limit, before_id=before_id) == [p.id for p in page]
    assert await repo.count() == 4
    with pytest.raises(ValueError, match="limit"):
        await repo.ids_page(limit=0)


# -- list_page with a filter ---------------------------------------------------------------------

FILTERS = [
    ListFilter(author="ada"),
    ListFilter(author="bob"),
    ListFilter(tag="x"),
    ListFilter(tag="y"),
    ListFilter(author="ada", tag="y"),
    ListFilter(author="bob", tag="x"),
    ListFilter(author="nobody"),
    ListFilter(tag="Y"),  # tags match exactly: no post has "Y"
]


def matches(post: Post, matching: ListFilter) -> bool:
    return matching.author in (None, post.author) and (
        matching.tag is None or matching.tag in post.tags
    )


async def walk(repo: PostRepository, matching: ListFilter, limit: int) -> list[int]:
    """Every page of the filter, by the keyset: the ids, in the order the pages gave them."""
    ids: list[int] = []
    before_id: int | None = None
    while page := await repo.list_page(limit=limit, before_id=before_id, matching=matching):
        assert all(matches(post, matching) for post in page)
        ids += [post.id for post in page]
        before_id = page[-1].id
    return ids


async def test_every_filter_pages_newest_first_and_follows_every_write(
    engine: AsyncEngine,
) -> None:
    repo = SqlPostRepository(engine)
    authors, tag_sets = ["ada", "bob"], [("x",), ("y", "x"), ("y", "y"), ()]
    made = [
        await repo.create(PostContent(f"p{n}", "b", authors[n % 2], tag_sets[n % 4]))
        for n in range(12)
    ]
    # every kind of write moves posts between filters: update (author, tags), restore, delete
    await repo.update(made[0].id, PostContent("p0", "b", "bob", ("y",)), expected_version=None)
    await repo.update(made[1].id, PostContent("p1", "b", "bob", ()), expected_version=None)
    await repo.restore(made[1].id, 1, expected_version=None)  # ada, ("y", "x") again
    await repo.delete(made[5].id, expected_version=None)
    current = [post for post in [await repo.get(p.id) for p in made] if post is not None]
    await tag_rows_in_step(engine)
    for matching in FILTERS:
        expected = sorted((p.id for p in current if matches(p, matching)), reverse=True)
        for limit in (1, 2, 5, 100):
            assert await walk(repo, matching, limit) == expected, (matching, limit)
    assert await walk(repo, ListFilter(author="nobody"), 10) == []


async def test_each_filter_reads_an_index(engine: AsyncEngine) -> None:
    """The query plan of each filter names its index, on PostgreSQL (sequential scans off: the
    tables are small, a scan would be cheaper) and SQLite."""
    repo = SqlPostRepository(engine)
    for n in range(3):
        await repo.create(PostContent(f"p{n}", "b", "ada", ("x",)))
    indexes = {
        ListFilter(author="ada"): "ix_posts_author_id",
        ListFilter(tag="x"): "ix_post_tags_tag_post_id",
        ListFilter(author="ada", tag="x"): "ix_post_tags_tag_author_post_id",
    }
    postgres = engine.dialect.name == "postgresql"
    for matching, index in indexes.items():
        query = page_query(matching, before_id=3).limit(20)
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        async with engine.connect() as connection:
            if postgres:
                await connection.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(
                str(row[-1]) for row in await connection.execute(text(explain + str(compiled)))
            )
        assert index in plan, (matching, plan)
        # the index gives the order: no sort step
        assert "TEMP B-TREE" not in plan, plan
        assert "Sort" not in plan, plan


# -- the database unavailable --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def unavailable(url: str, timeout: float) -> DatabaseUnavailable:
    """The error every repository method raises on `url`, checked to be quick."""
    engine = create_engine(url, pool_size=2, timeout=timeout)
    repo = SqlPostRepository(engine)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: repo.get(1),
        lambda: repo.list_page(limit=10, before_id=None),
        lambda: repo.create(FIRST),
        lambda: repo.update(1, FIRST, expected_version=1),
        lambda: repo.delete(1, expected_version=None),
        lambda: repo.versions(1),
        lambda: repo.version(1, 1),
        lambda: repo.restore(1, 1, expected_version=None),
    ]
    errors = []
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as raised:
                await call()
            assert time.monotonic() - started < timeout + 1.0
            errors.append(raised.value)
    finally:
        await engine.dispose()
    return errors[0]


async def test_refused_connection_is_unavailable_without_the_password() -> None:
    port = free_port()
    error = await unavailable(f"postgresql+asyncpg://postal:{PASSWORD}@127.0.0.1:{port}/x", 2.0)
    message = str(error)
    assert PASSWORD not in message
    assert f"postgresql+asyncpg://postal:***@127.0.0.1:{port}/x" in message
    assert "ConnectionRefusedError" in message


async def test_unanswered_connect_times_out_as_unavailable(black_hole: int) -> None:
    url = f"postgresql+asyncpg://postal:{PASSWORD}@127.0.0.1:{black_hole}/x"
    error = await unavailable(url, 0.3)
    assert PASSWORD not in str(error)
    assert "TimeoutError" in str(error)


async def test_wrong_database_is_unavailable(database_url: str) -> None:
    error = await unavailable(database_url.rpartition("/")[0] + "/postal_no_such_db", 2.0)
    assert "does not exist" in str(error)


# The engine's one timeout bounds connecting too: 1 s, so that a backend slow to start on a
# loaded machine is not taken for what these tests look for.
TIGHT = 1.0


async def test_statement_timeout_is_unavailable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, timeout=TIGHT)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="statement timeout"), database_errors(engine):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 2.5  # not the 3 s sleep
        async with engine.connect() as connection:  # the pool recovers
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_no_free_pooled_connection_is_unavailable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, timeout=TIGHT)
    try:
        async with engine.connect():  # holds the only connection
            with pytest.raises(DatabaseUnavailable, match="no pooled connection"):
                await SqlPostRepository(engine).get(1)
    finally:
        await engine.dispose()


async def test_recovers_after_its_connections_are_killed(postgres_engine: AsyncEngine) -> None:
    """A PostgreSQL restart or failover, as the pool sees it: every connection gone at once."""
    repo = SqlPostRepository(postgres_engine)
    post = await repo.create(FIRST)
    await asyncio.gather(*(repo.get(post.id) for _ in range(3)))  # a few pooled connections
    await terminate_connections(str(postgres_engine.url.database))
    with contextlib.suppress(DatabaseUnavailable):  # the first use may find its connection dead
        await repo.get(post.id)
    assert await repo.get(post.id) == post  # then the pool has reconnected


async def test_other_errors_are_not_unavailability(postgres_engine: AsyncEngine) -> None:
    repo = SqlPostRepository(postgres_engine)
    with pytest.raises(exc.DBAPIError) as raised:
        await repo.create(PostContent(title="x" * 201, body="", author="a"))
    assert not isinstance(raised.value, DatabaseUnavailable)
    assert await repo.list_page(limit=1, before_id=None) == []  # nothing half-written


# -- get on PostgreSQL's driver -----------------------------------------------------------------


async def test_postgres_get_goes_around_sqlalchemy_unless_statements_are_listened_to(
    postgres_engine: AsyncEngine,
) -> None:
    repo = SqlPostRepository(postgres_engine)  # nothing listens yet: `get` uses the driver
    post = await repo.create(FIRST)
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(postgres_engine.sync_engine, "before_cursor_execute", listen)
    try:
        assert await repo.get(post.id) == post  # the same Post as through SQLAlchemy
        assert await repo.get(post.id + 1) is None
        assert seen == []  # decided when the repository was built
        await repo.list_page(limit=1, before_id=None)
        assert len(seen) == 1  # other reads go through SQLAlchemy
        listened = SqlPostRepository(postgres_engine)  # built while a listener is attached
        assert await listened.get(post.id) == post
        assert len(seen) == 2
        assert "FROM posts" in seen[1]
    finally:
        event.remove(postgres_engine.sync_engine, "before_cursor_execute", listen)


async def test_driver_statement_timeout_is_unavailable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, timeout=TIGHT)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await driver_fetchrow(engine, "SELECT pg_sleep(3)")
        assert time.monotonic() - started < 2.5  # not the 3 s sleep
        assert dict(await driver_fetchrow(engine, "SELECT 1 AS one")) == {"one": 1}  # recovered
    finally:
        await engine.dispose()


async def test_driver_statement_cancelled_mid_way_leaves_no_connection_behind(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=1, timeout=5.0)
    try:
        sleeping = asyncio.ensure_future(driver_fetchrow(engine, "SELECT pg_sleep(5)"))
        await asyncio.sleep(0.2)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        # The interrupted connection was closed, not handed back with a statement still running:
        # the pool's only slot is free, and the next statement runs at once.
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        started = time.monotonic()
        assert dict(await driver_fetchrow(engine, "SELECT 2 AS two")) == {"two": 2}
        assert time.monotonic() - started < 1.0
    finally:
        await engine.dispose()


# -- engines -------------------------------------------------------------------------------------


async def test_postgres_engine_sets_the_statement_timeout(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, timeout=2.5)
    try:
        async with engine.connect() as connection:
            setting = await connection.execute(text("SHOW statement_timeout"))
            assert setting.scalar_one() == "2500ms"
    finally:
        await engine.dispose()


async def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "postal.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", pool_size=2, timeout=1.5)
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 1500}
        assert path.exists()
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "pool_size", "timeout"),
    [
        (f"mysql+aiomysql://root:{PASSWORD}@db/postal", 5, 1.0),
        ("sqlite:///postal.db", 5, 1.0),  # the sync driver
        ("sqlite+aiosqlite:///postal.db", 0, 1.0),
        ("sqlite+aiosqlite:///postal.db", 5, 0.0),
    ],
)
def test_create_engine_refuses(url: str, pool_size: int, timeout: float) -> None:
    with pytest.raises(ValueError, match=r"unsupported|pool_size|timeout") as raised:
        create_engine(url, pool_size=pool_size, timeout=timeout)
    assert PASSWORD not in str(raised.value)
