"""PostImporter against real PostgreSQL (and SQLite) and a real Redis: what is written, what is
reported, what the cache holds afterwards, and what an interrupted import leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as redis
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncTransaction
from sqlalchemy.pool import QueuePool

from postal.cache import (
    CacheClient,
    CacheTimeouts,
    GuardedFill,
    Invalidator,
    PoolConfig,
    Profile,
    ReadThrough,
    guarded,
)
from postal.imports.cache_step import time_invalidation
from postal.imports.csv_rows import RowProblem
from postal.imports.importer import ImportOptions, ImportProgress, ImportReport, PostImporter
from postal.imports.ports import ImportConflict, NewPost
from postal.posts.cache_keys import LIST_GENERATION, post_key
from postal.posts.cursors import Cursors
from postal.posts.entries import Entry
from postal.posts.errors import DatabaseUnavailable
from postal.posts.models import Post, PostContent
from postal.posts.ports import PostRepository
from postal.posts.representation import etag, post_json
from postal.posts.service import CacheTtls, PostService
from postal.storage.bulk import BulkWriter
from postal.storage.db import create_engine
from postal.storage.import_store import SqlImportStore
from postal.storage.repository import SqlPostRepository
from postal.storage.tables import posts
from postal_testing.redis_servers import free_port
from tests.support.database import row_counts

HEADER = "title,body,author,tags"
ORIGINAL = PostContent("Original", "the first body", "ada", ("old",))
_POOL = PoolConfig(max_size=4, min_idle=1, max_idle=2)
# Generous deadlines: these tests are about what the cache holds, not about timing.
PROFILE = Profile(read_pool=_POOL, write_pool=_POOL, timeouts=CacheTimeouts(get=2.0, set=2.0))
TTLS = CacheTtls()


def csv_bytes(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


async def chunked(data: bytes, size: int = 64) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class CountingRepository:
    """The real repository, counting the posts it loads (to tell a cache hit from a load)."""

    def __init__(self, inner: PostRepository) -> None:
        self._inner = inner
        self.loads = 0
        self.hold: asyncio.Event | None = None  # set: `get` waits for it after reading
        self.loaded = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, post_id: int) -> Post | None:
        self.loads += 1
        post = await self._inner.get(post_id)
        if self.hold is not None:
            self.loaded.set()
            await self.hold.wait()
        return post


@dataclass
class Setup:
    engine: AsyncEngine
    cache: CacheClient
    invalidator: Invalidator
    reads: ReadThrough
    repository: CountingRepository
    service: PostService
    importer: PostImporter

    async def run(self, data: bytes, options: ImportOptions | None = None) -> ImportReport:
        return await self.importer.run(chunked(data), options or ImportOptions())

    async def read(self, post_id: int) -> Entry:
        entry = await self.service.read_post(post_id)
        await self.reads.drain(5.0)  # the fill is done: the next read may hit
        return entry


@asynccontextmanager
async def importing(
    engine: AsyncEngine,
    redis_url: str,
    key_prefix: str,
    *,
    method: Any = "auto",
    max_body_bytes: int = 10_000,
) -> AsyncIterator[Setup]:
    """The parts as create_app builds them, around `engine`."""
    cache = CacheClient.create(read_url=redis_url, profile=PROFILE, key_prefix=key_prefix)
    await cache.start()
    invalidator = Invalidator(cache, give_up_after=60.0)
    reads = ReadThrough(cache, bypass=invalidator.is_pending, local_writes=invalidator.begun)
    repository = CountingRepository(SqlPostRepository(engine))
    service = PostService(repository, reads, invalidator, TTLS, cursors=Cursors(b"k" * 32))
    store = SqlImportStore(engine, method)
    importer = PostImporter(store, cache, invalidator, ttls=TTLS, max_body_bytes=max_body_bytes)
    try:
        yield Setup(engine, cache, invalidator, reads, repository, service, importer)
    finally:
        await reads.drain(5.0)
        await invalidator.aclose()
        await cache.aclose()


@pytest.fixture(params=["copy", "insert"])
async def setup(
    request: pytest.FixtureRequest, postgres_engine: AsyncEngine, redis_url: str, key_prefix: str
) -> AsyncIterator[Setup]:
    async with importing(postgres_engine, redis_url, key_prefix, method=request.param) as built:
        yield built


async def seed(engine: AsyncEngine, count: int) -> list[Post]:
    repository = SqlPostRepository(engine)
    return [await repository.create(ORIGINAL) for _ in range(count)]


def reasons(report: ImportReport) -> list[tuple[int, str | None, RowProblem]]:
    return [(error.line, error.column, error.reason) for error in report.errors]


# -- what is written -----------------------------------------------------------------------------


async def test_creates_and_updates_with_their_versions(setup: Setup) -> None:
    [first, second] = await seed(setup.engine, 2)
    news = csv_bytes('New one,"a body, with a comma",grace,x|y', "New two,body two,linus,")
    report = await setup.run(news)
    assert (report.committed, report.created, report.updated, report.invalid) == (True, 2, 0, 0)
    before = datetime.now(UTC)
    updates = csv_bytes(
        f"{first.id},Updated,new body,ada,t,2001-01-01T00:00:00Z",
        ",Dated,old body,ada,,2010-06-01T12:00:00+02:00",
        header="id,title,body,author,tags,created_at",
    )
    report = await setup.run(updates, ImportOptions(batch_size=1))
    assert (report.committed, report.rows_read, report.created, report.updated) == (
        True,
        2,
        1,
        1,
    )
    assert report.errors == ()
    repository = SqlPostRepository(setup.engine)
    updated = await repository.get(first.id)
    assert updated is not None
    assert (updated.title, updated.body, updated.tags, updated.version) == (
        "Updated",
        "new body",
        ("t",),
        2,
    )
    assert updated.created_at == first.created_at  # the row's created_at is ignored on update
    assert updated.updated_at >= before
    assert [v.title for v in await repository.versions(first.id)] == ["Original", "Updated"]
    untouched = await repository.get(second.id)
    assert untouched == second
    page = await repository.list_page(limit=10)
    assert [(p.title, p.author, p.tags) for p in page[:3]] == [
        ("Dated", "ada", ()),
        ("New two", "linus", ()),
        ("New one", "grace", ("x", "y")),
    ]
    assert page[0].created_at == datetime(2010, 6, 1, 10, 0, tzinfo=UTC)
    assert page[0].updated_at == page[0].created_at
    assert all(p.version == 1 for p in page[:3])
    assert await row_counts(setup.engine) == (5, 6)


async def test_many_batches_in_small_chunks_stream_through(setup: Setup) -> None:
    rows = [f"Title {n},Body {n},author{n % 3},t{n}" for n in range(57)]
    seen: list[ImportProgress] = []
    report = await setup.importer.run(
        chunked(csv_bytes(*rows), size=7), ImportOptions(batch_size=5), seen.append
    )
    assert (report.committed, report.rows_read, report.created) == (True, 57, 57)
    assert await row_counts(setup.engine) == (57, 57)
    assert len(seen) > 12  # after each chunk and each batch
    assert [p.bytes_read for p in seen] == sorted(p.bytes_read for p in seen)
    assert seen[-1] == ImportProgress(len(csv_bytes(*rows)), 57, 0)
    titles = {post.title for post in await SqlPostRepository(setup.engine).list_page(limit=100)}
    assert titles == {f"Title {n}" for n in range(57)}


async def test_all_or_nothing_writes_nothing_and_reports_every_bad_row(setup: Setup) -> None:
    [post] = await seed(setup.engine, 1)
    rows = [
        ",Good,body,ada,",  # line 2
        f"{post.id},Good update,body,ada,",  # line 3
        ",,body,ada,",  # line 4: no title
        "4242,Unknown,body,ada,",  # line 5: no such post
        *[f",Good {n},body,ada," for n in range(10)],  # lines 6-15: after the first bad row
        ",Dated,body,ada,not a date",  # line 16
        "999999,Unknown too,body,ada,",  # line 17
    ]
    data = csv_bytes(*rows, header="id,title,body,author,created_at")
    report = await setup.run(data, ImportOptions(batch_size=3))
    assert not report.committed
    assert (report.created, report.updated, report.invalid, report.rows_read) == (0, 0, 4, 16)
    assert reasons(report) == [
        (4, "title", RowProblem.MISSING_FIELD),
        (5, "id", RowProblem.UNKNOWN_ID),
        (16, "created_at", RowProblem.BAD_DATE),
        (17, "id", RowProblem.UNKNOWN_ID),
    ]
    assert report.cache is None
    assert report.to_json()["errors"][1] == {
        "line": 5,
        "column": "id",
        "reason": "unknown_id",
        "message": "no post with id 4242: an id must name an existing post",
    }
    assert await row_counts(setup.engine) == (1, 1)
    assert await SqlPostRepository(setup.engine).get(post.id) == post


async def test_skip_invalid_writes_the_good_rows_and_reports_the_bad(setup: Setup) -> None:
    [post] = await seed(setup.engine, 1)
    rows = [
        ",Good one,body,ada",
        "77,Unknown,body,ada",
        f"{post.id},Updated,body,ada",
        ",,no title,ada",
        ",Good two,body,ada",
        f"{post.id},Twice,body,ada",  # duplicate id in the file
    ]
    data = csv_bytes(*rows, header="id,title,body,author")
    report = await setup.run(data, ImportOptions(skip_invalid=True, batch_size=2))
    assert report.committed
    assert (report.created, report.updated, report.invalid) == (2, 1, 3)
    assert reasons(report) == [
        (3, "id", RowProblem.UNKNOWN_ID),
        (5, "title", RowProblem.MISSING_FIELD),
        (7, "id", RowProblem.DUPLICATE_ID),
    ]
    repository = SqlPostRepository(setup.engine)
    updated = await repository.get(post.id)
    assert updated is not None
    assert (updated.title, updated.version) == ("Updated", 2)
    assert await row_counts(setup.engine) == (3, 4)
    assert report.cache is not None
    assert report.cache.keys == 3


async def test_errors_are_cut_at_the_limit_and_counted_in_full(setup: Setup) -> None:
    rows = [f",,body {n},ada" if n % 2 else f"{1000 + n},Unknown,body,ada" for n in range(20)]
    data = csv_bytes(*rows, header="id,title,body,author")
    report = await setup.run(data, ImportOptions(max_reported_errors=5, batch_size=4))
    assert (report.committed, report.invalid, len(report.errors)) == (False, 20, 5)
    # the first five by line, whichever check found them
    assert [error.line for error in report.errors] == [2, 3, 4, 5, 6]
    assert report.to_json()["errors_truncated"] is True
    counted = await setup.run(data, ImportOptions(max_reported_errors=0))
    assert (counted.invalid, counted.errors) == (20, ())


async def test_a_bad_header_is_a_report_not_an_exception(setup: Setup) -> None:
    report = await setup.run(csv_bytes("a,b,c,d", header="title,body,author,colour"))
    assert not report.committed
    assert reasons(report) == [(1, "colour", RowProblem.UNKNOWN_COLUMN)]
    assert report.invalid == 1
    empty = await setup.run(b"")
    assert reasons(empty) == [(1, None, RowProblem.EMPTY_FILE)]
    ignored = await setup.run(
        csv_bytes("a,b,c,d", header="title,body,author,colour"),
        ImportOptions(ignore_unknown_columns=True),
    )
    assert (ignored.committed, ignored.created) == (True, 1)


# -- memory: a batch is cut by its size too ------------------------------------------------------


@pytest.mark.parametrize("method", ["copy", "insert"])
async def test_large_bodies_are_written_in_batches_of_bounded_size(
    postgres_engine: AsyncEngine,
    redis_url: str,
    key_prefix: str,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows with bodies near the limit: a batch of 1,000 of them would be held in memory whole
    (a gigabyte at the default 1 MB limit, and the next one parsed meanwhile) and sent in one
    COPY that the statement timeout cuts. Batches stop at `batch_chars` of text instead."""
    body_chars = 400_000
    written: list[int] = []  # the text of each batch written, in characters
    create = BulkWriter.create

    async def recording(writer: BulkWriter, new: Sequence[NewPost]) -> list[int]:
        written.append(sum(len(post.content.body) for post in new))
        return await create(writer, new)

    monkeypatch.setattr(BulkWriter, "create", recording)
    rows = [f"Big {n},{chr(97 + n) * body_chars},ada," for n in range(24)]  # ~9.6 MB
    async with importing(
        postgres_engine, redis_url, key_prefix, method=method, max_body_bytes=1_000_000
    ) as setup:
        report = await setup.importer.run(chunked(csv_bytes(*rows), size=64 * 1024))
    assert (report.committed, report.created) == (True, 24)
    assert ImportOptions().batch_size >= 24  # so only the size can have cut the batches
    assert sum(written) == 24 * body_chars
    # a few megabytes a batch (the limit, and the row that passed it), not the whole 9.6
    assert max(written) <= 5_000_000
    bodies = {post.body[0] for post in await SqlPostRepository(postgres_engine).list_page(limit=30)}
    assert bodies == {chr(97 + n) for n in range(24)}


# -- the cache after the commit ------------------------------------------------------------------


async def test_readers_see_the_import_once_it_has_returned(
    setup: Setup, raw_redis: redis.Redis, key_prefix: str
) -> None:
    [post] = await seed(setup.engine, 1)
    assert (await setup.read(post.id)).found
    assert (await setup.read(post.id)).body == post_json(post)  # now from the cache
    absent = post.id + 1
    assert not (await setup.read(absent)).found  # a negative entry, cached
    assert not (await setup.read(absent)).found
    loads = setup.repository.loads
    assert loads == 2  # one load each; the second reads hit
    generation = await raw_redis.get(key_prefix + LIST_GENERATION)

    data = csv_bytes(
        f"{post.id},Imported,new body,ada,", ",Fresh,body,grace,", header=f"id,{HEADER}"
    )
    report = await setup.run(data)
    assert (report.committed, report.updated, report.created) == (True, 1, 1)
    assert report.cache is not None
    assert (report.cache.keys, report.cache.pending, report.cache.warmed) == (2, False, 0)

    updated = await setup.read(post.id)
    assert updated.etag == etag(2)
    assert b'"title":"Imported"' in updated.body
    created = await setup.read(absent)  # the new post took the id the 404 was cached for
    assert created.found
    assert b'"title":"Fresh"' in created.body
    assert setup.repository.loads == loads + 2  # both were invalidated: loaded again
    bumped = await raw_redis.get(key_prefix + LIST_GENERATION)  # once (created if it was absent)
    assert bumped is not None
    assert generation is None or int(bumped) == int(generation) + 1


async def test_warm_fills_the_entries_a_read_then_hits(
    setup: Setup, raw_redis: redis.Redis, key_prefix: str
) -> None:
    [post] = await seed(setup.engine, 1)
    await setup.read(post.id)  # cached at version 1
    data = csv_bytes(f"{post.id},Warm,body,ada,", ",New,body,ada,", header=f"id,{HEADER}")
    report = await setup.run(data, ImportOptions(warm=True, cache_batch_size=1))
    assert report.cache is not None
    assert (report.cache.keys, report.cache.warmed, report.cache.pipelines) == (2, 2, 4)
    loads = setup.repository.loads
    hits = setup.reads.stats().hits
    for post_id in (post.id, post.id + 1):
        entry = await setup.read(post_id)
        current = await SqlPostRepository(setup.engine).get(post_id)
        assert current is not None
        # the very bytes read_post would have cached
        assert entry == Entry(200, etag(current.version), post_json(current))
    assert setup.repository.loads == loads  # no load: both hit
    assert setup.reads.stats().hits == hits + 2
    ttl = await raw_redis.pttl(key_prefix + post_key(post.id).key)
    assert TTLS.post * 1000 * 0.9 < ttl <= TTLS.post * 1000 * 1.1 + 1  # the post TTL, jittered


async def test_a_read_that_began_before_the_import_cannot_fill_the_old_content(
    setup: Setup,
) -> None:
    """A reader misses and loads version 1; the import commits version 2 and returns; the
    reader's late fill must not reach the cache: every read from then on sees version 2."""
    [post] = await seed(setup.engine, 1)
    setup.repository.hold = asyncio.Event()
    reader = asyncio.create_task(setup.service.read_post(post.id))
    await asyncio.wait_for(setup.repository.loaded.wait(), 5)
    held, setup.repository.hold = setup.repository.hold, None
    report = await setup.run(csv_bytes(f"{post.id},Second,body,ada,", header=f"id,{HEADER}"))
    assert report.committed
    held.set()
    assert (await reader).etag == etag(1)  # it began before the import: fair
    await setup.reads.drain(5.0)
    assert setup.reads.stats().fills_stale_rejected == 1
    for _ in range(3):
        assert (await setup.read(post.id)).etag == etag(2)


async def test_with_redis_down_the_import_commits_and_the_invalidation_is_pending(
    postgres_engine: AsyncEngine, key_prefix: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    async with importing(postgres_engine, nowhere, key_prefix) as setup:
        [post] = await seed(setup.engine, 1)
        data = csv_bytes(f"{post.id},Changed,body,ada,", ",New,body,ada,", header=f"id,{HEADER}")
        report = await setup.run(data, ImportOptions(warm=True, cache_batch_size=1))
        assert (report.committed, report.updated, report.created) == (True, 1, 1)
        assert report.cache is not None
        assert (report.cache.pending, report.cache.warmed) == (True, 0)
        assert setup.invalidator.is_pending(post_key(post.id))
        assert setup.invalidator.is_pending(post_key(post.id + 1))
        stats = setup.invalidator.stats()
        assert stats.pending_generations == 1  # the list pages'
        # this process reads them from the database meanwhile
        assert b'"title":"Changed"' in (await setup.service.read_post(post.id)).body


async def test_with_redis_down_a_read_after_the_import_never_joins_a_load_from_before(
    postgres_engine: AsyncEngine, key_prefix: str
) -> None:
    """Without Redis there is no generation to key the shared loads by: they are keyed by the
    invalidator's `begun()` count, which the import's cache step moves after its commit, before it
    returns. A reader arriving after the import must start a load of its own, not join one that
    read the database before the commit."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    async with importing(postgres_engine, nowhere, key_prefix) as setup:
        [post] = await seed(setup.engine, 1)
        setup.repository.hold = asyncio.Event()
        before = asyncio.create_task(setup.service.read_post(post.id))
        await asyncio.wait_for(setup.repository.loaded.wait(), 5)  # read version 1, held
        held, setup.repository.hold = setup.repository.hold, None
        begun = setup.invalidator.begun()
        report = await setup.run(csv_bytes(f"{post.id},Second,body,ada,", header=f"id,{HEADER}"))
        assert report.committed
        assert setup.invalidator.begun() > begun
        after = await asyncio.wait_for(setup.service.read_post(post.id), 10)  # not held
        assert after.etag == etag(2)
        assert not before.done()
        held.set()
        assert (await before).etag == etag(1)  # it began before the import: fair


async def test_an_empty_file_commits_nothing_and_sends_nothing(
    setup: Setup, raw_redis: redis.Redis, key_prefix: str
) -> None:
    report = await setup.run(csv_bytes())
    assert (report.committed, report.rows_read, report.created) == (True, 0, 0)
    assert report.cache is not None
    assert (report.cache.keys, report.cache.pipelines) == (0, 0)
    assert await raw_redis.get(key_prefix + LIST_GENERATION) is None


# -- two imports at once ------------------------------------------------------------------------


async def locked_elsewhere(engine: AsyncEngine, post_id: int) -> bool:
    """Whether another transaction holds `post_id`'s row lock (an import's batch has locked it)."""
    async with engine.connect() as connection:
        try:
            await connection.execute(
                select(posts.c.id).where(posts.c.id == post_id).with_for_update(nowait=True)
            )
        except DBAPIError:
            return True
        finally:
            await connection.rollback()
    return False


async def test_two_imports_updating_the_same_posts_in_opposite_orders(
    postgres_engine: AsyncEngine, redis_url: str, key_prefix: str
) -> None:
    """Import A locks post 1 in its first batch and wants post 2 in its second; import B the
    other way round. Rows are locked batch by batch, so no order can hold across batches: the
    database breaks the deadlock by failing one of them, which must say so (not a bare driver
    error, a 500), roll back, and leave the other to commit."""
    first, second = await seed(postgres_engine, 2)
    async with (
        importing(postgres_engine, redis_url, key_prefix) as a,
        importing(postgres_engine, redis_url, key_prefix) as b,
    ):
        both_locked = asyncio.Event()

        async def chunks(mine: Post, theirs: Post) -> AsyncIterator[bytes]:
            yield f"id,title,body,author\n{mine.id},Mine,body,ada\n".encode()
            await both_locked.wait()
            yield f"{theirs.id},Theirs,body,ada\n".encode()

        options = ImportOptions(batch_size=1)
        runs = [
            asyncio.create_task(a.importer.run(chunks(first, second), options)),
            asyncio.create_task(b.importer.run(chunks(second, first), options)),
        ]
        async with asyncio.timeout(10):  # each has locked its first batch's post
            while not (  # noqa: ASYNC110 - polling the database's state, which has no event
                await locked_elsewhere(postgres_engine, first.id)
                and await locked_elsewhere(postgres_engine, second.id)
            ):
                await asyncio.sleep(0.01)
        both_locked.set()
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    reports = [outcome for outcome in outcomes if isinstance(outcome, ImportReport)]
    assert len(failed) == 1, outcomes
    assert len(reports) == 1, outcomes
    assert isinstance(failed[0], ImportConflict), repr(failed[0])
    assert "nothing was imported" in str(failed[0])
    assert (reports[0].committed, reports[0].updated) == (True, 2)
    repository = SqlPostRepository(postgres_engine)
    versions = [await repository.versions(post.id) for post in (first, second)]
    assert [len(found) for found in versions] == [2, 2]  # the winner's; the loser rolled back


# -- interrupted ---------------------------------------------------------------------------------


async def test_a_cancelled_import_leaves_the_database_as_it_was(setup: Setup) -> None:
    [post] = await seed(setup.engine, 1)
    rows = [f"{post.id},Changed,body,ada"] + [f",Row {n},body,ada" for n in range(30)]
    data = csv_bytes(*rows, header="id,title,body,author")
    stalled = asyncio.Event()
    never = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield data  # every row: several batches written
        stalled.set()
        await never.wait()  # the rest of the upload never comes
        yield b""

    progress: list[ImportProgress] = []
    task = asyncio.create_task(
        setup.importer.run(chunks(), ImportOptions(batch_size=4), progress.append)
    )
    await asyncio.wait_for(stalled.wait(), 5)
    assert progress[-1].rows_read == 31  # the batches were written: it was mid-import
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await row_counts(setup.engine) == (1, 1)
    assert await SqlPostRepository(setup.engine).get(post.id) == post
    pool = setup.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # the connection went back, rolled back
    # the next import works; its post's id shows the cancelled one had written its batches
    # (a sequence does not roll back)
    report = await setup.run(csv_bytes("After,body,ada,"))
    assert (report.committed, report.created) == (True, 1)
    [after] = await SqlPostRepository(setup.engine).list_page(limit=1)
    assert after.title == "After"
    assert after.id > post.id + 4 * 6


async def test_cancelled_once_the_commit_has_landed_the_keys_are_still_invalidated(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit reached the database, then the import was cancelled before it heard back (a
    shutdown's deadline, a second Ctrl-C): the cache must not keep serving the old posts."""
    [post] = await seed(setup.engine, 1)
    assert (await setup.read(post.id)).etag == etag(1)  # cached
    committed = asyncio.Event()
    commit = AsyncTransaction.commit

    async def commit_then_hang(transaction: AsyncTransaction) -> None:
        await commit(transaction)
        committed.set()
        await asyncio.Event().wait()  # the answer is slow to come back; then the cancellation

    monkeypatch.setattr(AsyncTransaction, "commit", commit_then_hang)
    data = csv_bytes(f"{post.id},Landed,body,ada,", header=f"id,{HEADER}")
    task = asyncio.create_task(setup.run(data))
    await asyncio.wait_for(committed.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    current = await SqlPostRepository(setup.engine).get(post.id)
    assert current is not None
    assert (current.title, current.version) == ("Landed", 2)  # it did commit
    loads = setup.repository.loads
    assert (await setup.read(post.id)).etag == etag(2)  # not the cached version 1
    assert setup.repository.loads == loads + 1  # the key was invalidated: loaded again


async def test_a_database_that_is_down_raises_database_unavailable(
    redis_url: str, key_prefix: str
) -> None:
    engine = create_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere", pool_size=1, timeout=2.0
    )
    try:
        async with importing(engine, redis_url, key_prefix) as setup:
            with pytest.raises(DatabaseUnavailable, match="unavailable"):
                await setup.run(csv_bytes("A,b,c,"))
    finally:
        await engine.dispose()


# -- SQLite, the embedded default ----------------------------------------------------------------


async def test_sqlite_imports_through_the_insert_path(
    sqlite_url: str, redis_url: str, key_prefix: str
) -> None:
    engine = create_engine(sqlite_url, pool_size=2, timeout=5.0)
    try:
        async with importing(engine, redis_url, key_prefix) as setup:
            assert setup.importer.method == "insert"
            [post] = await seed(engine, 1)
            await setup.read(post.id)
            data = csv_bytes(
                *[f",Row {n},body,ada," for n in range(7)],
                f"{post.id},Changed,body,ada,",
                "12345,Unknown,body,ada,",
                header=f"id,{HEADER}",
            )
            refused = await setup.run(data, ImportOptions(batch_size=3))
            assert (refused.committed, reasons(refused)) == (
                False,
                [(10, "id", RowProblem.UNKNOWN_ID)],
            )
            assert await row_counts(engine) == (1, 1)
            report = await setup.run(
                data, ImportOptions(batch_size=3, skip_invalid=True, warm=True)
            )
            assert (report.committed, report.created, report.updated) == (True, 7, 1)
            assert await row_counts(engine) == (8, 9)
            entry = await setup.read(post.id)
            assert (entry.etag, b'"title":"Changed"' in entry.body) == (etag(2), True)
    finally:
        await engine.dispose()


# -- the cache layer's batch forms ---------------------------------------------------------------


async def test_invalidate_many_returns_the_new_generations_and_fill_many_quotes_them(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    async with CacheClient.create(
        read_url=redis_url, profile=PROFILE, key_prefix=key_prefix
    ) as cache:
        keys = [guarded("thing", str(n)) for n in range(3)]
        seen = await cache.get_guarded(keys[0])
        await cache.fill_guarded(keys[0], seen.generation, b"old", ttl=60)
        await cache.invalidate(keys[1:2])
        before = [(await cache.get_guarded(key)).generation for key in keys[:2]]
        generations = await cache.invalidate_many(keys, ["shared:{gen}"])
        assert generations[:2] == [before[0] + 1, before[1] + 1]
        assert generations[2] > 1_000_000  # created by the bump, at a random start
        assert await raw_redis.get(key_prefix + keys[0].key) is None  # deleted
        shared = await raw_redis.get(key_prefix + "shared:{gen}")
        assert shared is not None
        assert int(shared) > 1_000_000
        assert await raw_redis.pttl(key_prefix + keys[0].generation_key) > 0
        fills = [
            GuardedFill(key, generation, b"v%d" % n, 60.0)
            for n, (key, generation) in enumerate(zip(keys, generations, strict=True))
        ]
        stale = GuardedFill(keys[2], generations[2] - 1, b"stale", 60.0)  # no longer its own
        assert await cache.fill_guarded_many([*fills, stale]) == 3
        assert [(await cache.get_guarded(key)).payload for key in keys] == [b"v0", b"v1", b"v2"]
        assert await cache.invalidate_many([]) == []
        assert await cache.fill_guarded_many([]) == 0


async def test_time_invalidation_runs_either_way_over_the_same_keys(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    async with CacheClient.create(
        read_url=redis_url, profile=PROFILE, key_prefix=key_prefix
    ) as cache:
        ids: Sequence[int] = range(1, 26)
        counters = [key_prefix + post_key(n).generation_key for n in ids]
        await raw_redis.mset(dict.fromkeys(counters, 0))
        one_by_one = await time_invalidation(cache, ids, keys_per_call=1)
        batched = await time_invalidation(cache, ids, keys_per_call=10)
        assert one_by_one > 0
        assert batched > 0
        assert await raw_redis.mget(counters) == [b"2"] * 25  # each key bumped once each way
        with pytest.raises(ValueError, match="keys_per_call"):
            await time_invalidation(cache, ids, keys_per_call=0)
