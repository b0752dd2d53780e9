"""PostImporter's decisions over in-memory fakes: what it writes, when it commits or rolls back,
what it reports, and what its cache step invalidates (or warms) after the commit. The same
importer on PostgreSQL, SQLite and Redis is in tests/integration/test_imports.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from postal.imports.csv_rows import RowProblem
from postal.imports.importer import ImportOptions, ImportProgress, ImportReport, PostImporter
from postal.imports.ports import ImportConflict
from postal.posts.cache_keys import LIST_GENERATION, post_key
from postal.posts.cursors import Cursors
from postal.posts.entries import Entry, encode_entry
from postal.posts.errors import DatabaseUnavailable
from postal.posts.models import Post, PostContent
from postal.posts.representation import etag, post_json
from postal.posts.service import CacheTtls, PostService
from tests.support.fakes import FakeImportStore, FakePostRepository, InMemoryCache
from tests.support.loop import spin_until

HEADER = "id,title,body,author,tags"
ORIGINAL = PostContent("Original", "the first body", "ada", ("old",))
TTLS = CacheTtls()
CURSORS = Cursors(b"k" * 32)


def csv_bytes(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


async def chunked(data: bytes, size: int = 64) -> AsyncIterator[bytes]:
    """`data` as a stream gives it: each chunk after a turn of the event loop, in which the batch
    write in flight, if any, runs (the fakes' writes take one turn)."""
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


@dataclass
class Rig:
    repository: FakePostRepository
    store: FakeImportStore
    cache: InMemoryCache
    importer: PostImporter
    service: PostService

    async def run(self, data: bytes, options: ImportOptions | None = None) -> ImportReport:
        return await self.importer.run(chunked(data), options or ImportOptions())

    async def seed(self, count: int) -> list[Post]:
        """Posts in the repository, without going through the cache."""
        return [await self.repository.create(ORIGINAL) for _ in range(count)]


@pytest.fixture
def rig() -> Rig:
    repository = FakePostRepository()
    store = FakeImportStore(repository)
    cache = InMemoryCache()
    importer = PostImporter(store, cache, cache, ttls=TTLS, max_body_bytes=10_000)
    return Rig(
        repository,
        store,
        cache,
        importer,
        PostService(repository, cache, cache, TTLS, cursors=CURSORS),
    )


def reasons(report: ImportReport) -> list[tuple[int, str | None, RowProblem]]:
    return [(error.line, error.column, error.reason) for error in report.errors]


def keys(*post_ids: int) -> set[str]:
    return {post_key(post_id).key for post_id in post_ids}


def invalidated_keys(cache: InMemoryCache) -> set[str]:
    return {key for batch, _counters in cache.invalidations for key in batch}


# -- what is written, and when it is committed ---------------------------------------------------


async def test_creates_and_updates_are_committed_in_one_unit_of_work(rig: Rig) -> None:
    [post] = await rig.seed(1)
    data = csv_bytes(",New,a body,grace,x|y", f"{post.id},Changed,new body,ada,")
    report = await rig.run(data)
    assert (report.committed, report.created, report.updated, report.invalid) == (True, 1, 1, 0)
    assert rig.importer.method == "memory"  # the store's
    [unit] = rig.store.units
    assert unit.state == "committed"
    assert unit.locked == [post.id]  # the rows it updates, read under lock
    changed = rig.repository.posts[post.id]
    assert (changed.title, changed.version, changed.created_at) == ("Changed", 2, post.created_at)
    [new] = [p for p in rig.repository.posts.values() if p.id != post.id]
    assert (new.title, new.tags, new.version) == ("New", ("x", "y"), 1)
    assert [v.title for v in await rig.repository.versions(post.id)] == ["Original", "Changed"]


async def test_rows_are_written_batch_size_at_a_time(rig: Rig) -> None:
    report = await rig.run(
        csv_bytes(*[f",Row {n},body,ada," for n in range(5)]), ImportOptions(batch_size=2)
    )
    assert (report.committed, report.created) == (True, 5)
    assert rig.store.units[0].creates == [2, 2, 1]


async def test_all_or_nothing_rolls_back_at_a_bad_row_and_reports_every_one(rig: Rig) -> None:
    [post] = await rig.seed(1)
    rows = [
        ",A,body,ada,",  # line 2
        f"{post.id},Changed,body,ada,",  # line 3: with line 2, a batch written
        ",,no title,ada,",  # line 4: bad; nothing more is written
        "4242,Unknown,body,ada,",  # line 5: still checked, and reported
        ",B,body,ada,",  # line 6
    ]
    report = await rig.run(csv_bytes(*rows), ImportOptions(batch_size=2))
    assert (report.committed, report.rows_read, report.invalid) == (False, 5, 2)
    assert reasons(report) == [
        (4, "title", RowProblem.MISSING_FIELD),
        (5, "id", RowProblem.UNKNOWN_ID),
    ]
    [unit] = rig.store.units
    assert unit.state == "rolled back"
    assert unit.creates == [1]  # the first batch, and no other
    assert (unit.locked, unit.unlocked) == ([post.id], [4242])  # checked, no longer locked
    assert rig.repository.posts == {post.id: post}  # as it was
    assert report.cache is None
    assert rig.cache.round_trips == 0  # nothing committed, nothing to invalidate


async def test_skip_invalid_keeps_the_good_rows_and_invalidates_exactly_them(rig: Rig) -> None:
    [post] = await rig.seed(1)
    rows = [
        ",Good one,body,ada,",
        "77,Unknown,body,ada,",
        f"{post.id},Updated,body,ada,",
        ",,no title,ada,",
        ",Good two,body,ada,",
        f"{post.id},Twice,body,ada,",  # duplicate id in the file
    ]
    report = await rig.run(csv_bytes(*rows), ImportOptions(skip_invalid=True, batch_size=2))
    assert (report.committed, report.created, report.updated, report.invalid) == (True, 2, 1, 3)
    assert reasons(report) == [
        (3, "id", RowProblem.UNKNOWN_ID),
        (5, "title", RowProblem.MISSING_FIELD),
        (7, "id", RowProblem.DUPLICATE_ID),
    ]
    assert rig.store.units[0].state == "committed"
    created = [p.id for p in rig.repository.posts.values() if p.id != post.id]
    assert [rig.repository.posts[i].title for i in created] == ["Good one", "Good two"]
    assert rig.repository.posts[post.id].title == "Updated"
    assert invalidated_keys(rig.cache) == keys(post.id, *created)
    assert report.cache is not None
    assert (report.cache.keys, report.cache.pending) == (3, False)


async def test_a_bad_header_reads_nothing_and_rolls_back(rig: Rig) -> None:
    report = await rig.run(csv_bytes("a,b,c,d", header="title,body,author,colour"))
    assert (report.committed, report.rows_read) == (False, 0)
    assert reasons(report) == [(1, "colour", RowProblem.UNKNOWN_COLUMN)]
    [unit] = rig.store.units
    assert (unit.state, unit.creates) == ("rolled back", [])


async def test_progress_is_reported_after_each_chunk_and_at_the_end(rig: Rig) -> None:
    data = csv_bytes(*[f",Title {n},Body {n},ada," for n in range(20)], ",,bad,ada,")
    seen: list[ImportProgress] = []
    options = ImportOptions(batch_size=3, skip_invalid=True)
    await rig.importer.run(chunked(data, size=7), options, seen.append)
    assert len(seen) == -(-len(data) // 7) + 1  # one per chunk, and one at the end
    assert [p.bytes_read for p in seen] == sorted(p.bytes_read for p in seen)
    assert seen[-1] == ImportProgress(len(data), 21, 1)


# -- the cache after the commit ------------------------------------------------------------------


async def test_the_cache_step_goes_in_batches_and_bumps_the_pages_once(rig: Rig) -> None:
    data = csv_bytes(*[f",Row {n},body,ada," for n in range(5)])
    report = await rig.run(data, ImportOptions(cache_batch_size=2))
    ids = sorted(rig.repository.posts)
    first, second, third = (tuple(post_key(i).key for i in ids[n : n + 2]) for n in (0, 2, 4))
    assert rig.cache.invalidations == [(first, (LIST_GENERATION,)), (second, ()), (third, ())]
    assert report.cache is not None
    assert (report.cache.keys, report.cache.pipelines, report.cache.warmed) == (5, 3, 0)


async def test_readers_see_the_import_once_it_has_returned(rig: Rig) -> None:
    [post] = await rig.seed(1)
    assert (await rig.service.read_post(post.id)).etag == etag(1)  # cached
    absent = post.id + 1
    assert not (await rig.service.read_post(absent)).found  # a negative entry, cached
    data = csv_bytes(f"{post.id},Imported,new body,ada,", ",Fresh,body,grace,")
    assert (await rig.run(data)).committed
    updated = await rig.service.read_post(post.id)
    assert (updated.etag, b'"title":"Imported"' in updated.body) == (etag(2), True)
    created = await rig.service.read_post(absent)  # the new post took the id the 404 was for
    assert (created.found, b'"title":"Fresh"' in created.body) == (True, True)


async def test_warm_fills_what_a_read_would_cache(rig: Rig) -> None:
    [post] = await rig.seed(1)
    await rig.service.read_post(post.id)  # cached at version 1
    data = csv_bytes(f"{post.id},Warm,body,ada,", ",New,body,ada,")
    report = await rig.run(data, ImportOptions(warm=True, cache_batch_size=1))
    assert report.cache is not None
    assert (report.cache.keys, report.cache.warmed, report.cache.pipelines) == (2, 2, 4)
    loads = rig.repository.loads
    for post_id in (post.id, post.id + 1):
        current = rig.repository.posts[post_id]
        entry = Entry(200, etag(current.version), post_json(current))
        assert rig.cache.cached(post_key(post_id)) == encode_entry(entry)
        assert await rig.service.read_post(post_id) == entry
    assert rig.repository.loads == loads  # both hit


async def test_warming_stops_when_the_database_fails_but_every_key_is_invalidated(
    rig: Rig,
) -> None:
    rig.store.read_error = DatabaseUnavailable("gone after the commit")
    data = csv_bytes(*[f",Row {n},body,ada," for n in range(3)])
    report = await rig.run(data, ImportOptions(warm=True, cache_batch_size=1))
    assert report.cache is not None
    assert (report.cache.keys, report.cache.warmed, report.cache.pending) == (3, 0, False)
    assert invalidated_keys(rig.cache) == keys(*rig.repository.posts)
    assert rig.cache.fills == []


async def test_with_the_cache_down_the_import_commits_and_its_keys_stay_pending(
    rig: Rig,
) -> None:
    [post] = await rig.seed(1)
    rig.cache.down = True
    data = csv_bytes(f"{post.id},Changed,body,ada,", ",New,body,ada,")
    report = await rig.run(data, ImportOptions(warm=True))
    assert (report.committed, report.updated, report.created) == (True, 1, 1)
    assert report.cache is not None
    assert (report.cache.pending, report.cache.warmed) == (True, 0)
    assert all(rig.cache.is_pending(post_key(i)) for i in (post.id, post.id + 1))
    assert rig.cache.pending_generations == {LIST_GENERATION}
    # this process reads them from the repository meanwhile
    assert b'"title":"Changed"' in (await rig.service.read_post(post.id)).body


async def test_an_empty_file_commits_and_sends_nothing(rig: Rig) -> None:
    report = await rig.run(csv_bytes())
    assert (report.committed, report.rows_read, report.created) == (True, 0, 0)
    assert report.cache is not None
    assert (report.cache.keys, report.cache.pipelines) == (0, 0)
    assert rig.cache.round_trips == 0


# -- failures and interruptions ------------------------------------------------------------------


async def test_a_commit_that_may_have_landed_is_invalidated_before_the_error_propagates(
    rig: Rig,
) -> None:
    [post] = await rig.seed(1)
    rig.store.commit_failure = (DatabaseUnavailable("lost at the COMMIT"), True)
    data = csv_bytes(f"{post.id},Landed,body,ada,")
    with pytest.raises(DatabaseUnavailable, match="lost at the COMMIT"):
        await rig.run(data, ImportOptions(warm=True))
    assert rig.repository.posts[post.id].title == "Landed"  # it did land
    assert invalidated_keys(rig.cache) == keys(post.id)
    assert rig.cache.fills == []  # invalidated only, not warmed


async def test_cancelled_while_the_commit_is_in_flight_its_keys_are_still_invalidated(
    rig: Rig,
) -> None:
    """The commit reached the database, then the import was cancelled before it heard back (a
    shutdown's deadline, a second Ctrl-C): the cache must not keep serving the old posts."""
    [post] = await rig.seed(1)
    await rig.service.read_post(post.id)  # cached at version 1
    rig.store.commit_gate = asyncio.Event()  # never set: the answer never comes back
    task = asyncio.create_task(rig.run(csv_bytes(f"{post.id},Landed,body,ada,")))
    await spin_until(lambda: bool(rig.store.units) and rig.store.units[0].state == "committed", 50)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert invalidated_keys(rig.cache) == keys(post.id)
    assert (await rig.service.read_post(post.id)).etag == etag(2)  # not the cached version 1


async def test_a_cancelled_import_rolls_back(rig: Rig) -> None:
    [post] = await rig.seed(1)
    rows = [f"{post.id},Changed,body,ada,"] + [f",Row {n},body,ada," for n in range(9)]
    stalled = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield csv_bytes(*rows)  # every row: several batches written
        stalled.set()
        await asyncio.Event().wait()  # the rest of the upload never comes
        yield b""

    task = asyncio.create_task(rig.importer.run(chunks(), ImportOptions(batch_size=4)))
    await asyncio.wait_for(stalled.wait(), 5)
    await spin_until(lambda: len(rig.store.units[0].creates) == 2, 50)  # mid-import
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.store.units[0].state == "rolled back"
    assert rig.repository.posts == {post.id: post}
    assert rig.cache.round_trips == 0


class ClientGone(Exception):
    """What a request stream raises when its client goes away mid-upload."""


async def test_an_error_from_the_chunks_rolls_back_and_propagates(rig: Rig) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield csv_bytes(*[f",Row {n},body,ada," for n in range(4)])
        raise ClientGone

    with pytest.raises(ClientGone):
        await rig.importer.run(chunks(), ImportOptions(batch_size=2))
    assert rig.store.units[0].state == "rolled back"
    assert rig.repository.posts == {}
    assert rig.cache.round_trips == 0


async def test_an_import_conflict_rolls_back_and_propagates(rig: Rig) -> None:
    first, second = await rig.seed(2)
    rig.store.lock_conflict = ImportConflict("deadlock detected; nothing was imported")
    data = csv_bytes(f"{first.id},Mine,body,ada,", f"{second.id},Theirs,body,ada,")
    with pytest.raises(ImportConflict, match="nothing was imported"):
        await rig.run(data)
    assert rig.store.units[0].state == "rolled back"
    assert rig.repository.posts == {first.id: first, second.id: second}
    assert rig.cache.round_trips == 0
