"""PostService's decisions over in-memory fakes: what it reads from the cache or the repository,
and what it invalidates after a write, whether the write succeeded, failed before its COMMIT
was sent, or failed when the COMMIT may have landed. The real parts are exercised in
tests/integration/test_read_path.py and test_write_failures.py."""

from __future__ import annotations

import json

import pytest

from postal.posts.cache_keys import LIST_GENERATION, page_key, post_key
from postal.posts.cursors import POSTS, Cursors, versions_kind
from postal.posts.entries import NOT_FOUND, Entry, encode_entry
from postal.posts.errors import (
    DatabaseUnavailable,
    InvalidCursor,
    NothingWritten,
    PostNotFound,
    VersionConflict,
)
from postal.posts.models import PostContent
from postal.posts.representation import PAGE_FRAME_BYTES, etag, post_json
from postal.posts.service import CacheTtls, PostService
from tests.support.fakes import FakePostRepository, InMemoryCache

CURSORS = Cursors(b"the tests' cursor key, 32 bytes.")

FIRST = PostContent("First", "the first body", "ada", ("a",))
SECOND = PostContent("Second", "the second body", "grace")


@pytest.fixture
def repository() -> FakePostRepository:
    return FakePostRepository()


@pytest.fixture
def cache() -> InMemoryCache:
    return InMemoryCache()


@pytest.fixture
def service(repository: FakePostRepository, cache: InMemoryCache) -> PostService:
    return PostService(repository, cache, cache, CacheTtls(), cursors=CURSORS)


# -- reads ---------------------------------------------------------------------------------------


async def test_a_read_loads_once_then_hits(
    service: PostService, repository: FakePostRepository
) -> None:
    post = await service.create(FIRST)
    loads = repository.loads
    first = await service.read_post(post.id)
    assert first == Entry(200, etag(1), post_json(post))
    assert await service.read_post(post.id) == first
    assert repository.loads == loads + 1  # the second read hit


async def test_a_missing_post_is_cached_as_not_found_until_it_is_created(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    assert await service.read_post(1) == NOT_FOUND
    assert cache.cached(post_key(1)) == encode_entry(NOT_FOUND)  # a negative entry
    post = await service.create(FIRST)
    assert post.id == 1
    assert (await service.read_post(1)).etag == etag(1)  # the create invalidated its id


async def test_a_page_has_a_cursor_only_when_more_follow(
    service: PostService, repository: FakePostRepository
) -> None:
    for _ in range(3):
        await service.create(FIRST)
    first = json.loads((await service.read_page(limit=2)).body)
    assert [item["id"] for item in first["items"]] == [3, 2]
    assert CURSORS.decode(POSTS, first["next_cursor"]) == 2
    last = json.loads((await service.read_page(limit=2, cursor=first["next_cursor"])).body)
    assert [item["id"] for item in last["items"]] == [1]
    assert last["next_cursor"] is None


async def test_a_cursor_not_made_here_is_refused_before_anything_is_read_or_cached(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    await service.create(FIRST)
    loads, cached = repository.loads, dict(cache.values)
    elsewhere = Cursors(b"another deployment's key, 32 b.").encode(POSTS, 2)
    versions_cursor = CURSORS.encode(versions_kind(1), 2)
    for forged in (elsewhere, versions_cursor, "cDI", "A" * 32, CURSORS.encode(POSTS, 2)[:-1]):
        with pytest.raises(InvalidCursor):
            await service.read_page(limit=10, cursor=forged)
    assert repository.loads == loads
    assert cache.values == cached


async def test_a_page_stops_at_its_byte_budget_and_one_over_it_is_not_cached(
    repository: FakePostRepository, cache: InMemoryCache
) -> None:
    budget = PAGE_FRAME_BYTES + 2_500
    service = PostService(
        repository, cache, cache, CacheTtls(), cursors=CURSORS, max_page_bytes=budget
    )
    for _ in range(5):
        await service.create(PostContent("Post", "x" * 1_000, "ada"))
    page = (await service.read_page(limit=10)).body
    assert len(page) <= budget
    assert [item["id"] for item in json.loads(page)["items"]] == [5, 4]  # two of 1 KB fit
    assert cache.cached(page_key(10, None)) is not None
    await service.create(PostContent("Big", "x" * 5_000, "ada"))  # alone over the budget
    big = json.loads((await service.read_page(limit=10)).body)
    assert [item["id"] for item in big["items"]] == [6]  # still shown, with a way on
    assert CURSORS.decode(POSTS, big["next_cursor"]) == 6
    assert cache.cached(page_key(10, None)) is None  # but not cached


async def test_versions_are_paged_without_bodies(
    service: PostService, repository: FakePostRepository
) -> None:
    post = await service.create(FIRST)
    for _ in range(4):
        post = await service.update(post.id, SECOND, expected=None)
    first = json.loads(await service.version_page(post.id, limit=2))
    assert [item["version"] for item in first["items"]] == [1, 2]
    assert all("body" not in item for item in first["items"])
    seen = [item["version"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = json.loads(await service.version_page(post.id, limit=2, cursor=cursor))
        seen += [item["version"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [1, 2, 3, 4, 5]
    with pytest.raises(InvalidCursor):  # another post's cursor
        await service.version_page(post.id + 1, limit=2, cursor=first["next_cursor"])
    with pytest.raises(PostNotFound):
        await service.version_page(post.id + 1, limit=2)


async def test_a_write_makes_every_cached_page_a_miss(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    await service.create(FIRST)
    await service.read_page(limit=10)
    assert cache.cached(page_key(10, None)) is not None
    await service.create(SECOND)
    assert cache.cached(page_key(10, None)) is None  # the pages' generation moved
    page = json.loads((await service.read_page(limit=10)).body)
    assert [item["title"] for item in page["items"]] == ["Second", "First"]


async def test_bytes_that_are_not_an_entry_are_invalidated_and_answered_from_the_repository(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    post = await service.create(FIRST)
    key = post_key(post.id)
    cache.values[key.key] = (cache.generation(key.generation_key), b"a foreign writer's bytes")
    assert (await service.read_post(post.id)).etag == etag(1)
    assert cache.invalidations[-1] == ((key.key,), ())
    assert cache.cached(key) is None


# -- writes: commit, then invalidate -------------------------------------------------------------


async def test_every_write_invalidates_its_post_and_the_pages(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    post = await service.create(FIRST)
    key = post_key(post.id).key
    assert cache.invalidations == [((key,), (LIST_GENERATION,))]
    await service.read_post(post.id)  # cached at version 1
    updated = await service.update(post.id, SECOND, expected=1)
    assert (await service.read_post(post.id)).etag == etag(2)
    restored = await service.restore(post.id, 1, expected=2)
    assert (updated.version, restored.version, restored.title) == (2, 3, "First")
    assert (await service.read_post(post.id)).etag == etag(3)
    await service.delete(post.id, expected=None)
    assert await service.read_post(post.id) == NOT_FOUND
    assert cache.invalidations == [((key,), (LIST_GENERATION,))] * 4


async def test_a_write_refused_by_the_repository_invalidates_nothing(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    post = await service.create(FIRST)
    before = list(cache.invalidations)
    with pytest.raises(VersionConflict):
        await service.update(post.id, SECOND, expected=7)
    assert cache.invalidations == before


async def test_nothing_written_leaves_the_cache_serving(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    """The database failed before the COMMIT was sent: the cached entry is still right, and
    keeps answering reads while the database is down."""
    post = await service.create(FIRST)
    await service.read_post(post.id)
    before = list(cache.invalidations)
    repository.fail_next_write(NothingWritten("refused"))
    with pytest.raises(NothingWritten):
        await service.update(post.id, SECOND, expected=None)
    assert cache.invalidations == before
    assert cache.cached(post_key(post.id)) is not None
    repository.fail_next_write(NothingWritten("refused"))
    with pytest.raises(NothingWritten):
        await service.create(SECOND)
    assert cache.invalidations == before


async def test_a_commit_that_may_have_landed_is_invalidated_all_the_same(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    post = await service.create(FIRST)
    await service.read_post(post.id)  # cached at version 1
    repository.fail_next_write(DatabaseUnavailable("lost at the COMMIT"), landed=True)
    with pytest.raises(DatabaseUnavailable):
        await service.update(post.id, SECOND, expected=1)
    assert cache.invalidations[-1] == ((post_key(post.id).key,), (LIST_GENERATION,))
    assert (await service.read_post(post.id)).etag == etag(2)  # it had landed: not stale
    repository.fail_next_write(DatabaseUnavailable("lost at the COMMIT"), landed=True)
    with pytest.raises(DatabaseUnavailable):
        await service.create(SECOND)
    keys, counters = cache.invalidations[-1]
    assert (list(keys), counters) == ([], (LIST_GENERATION,))  # no id known: the pages only


async def test_with_the_cache_down_a_write_succeeds_and_its_post_is_read_from_the_repository(
    service: PostService, repository: FakePostRepository, cache: InMemoryCache
) -> None:
    post = await service.create(FIRST)
    await service.read_post(post.id)  # cached at version 1
    cache.down = True
    updated = await service.update(post.id, SECOND, expected=1)
    assert updated.version == 2
    assert cache.is_pending(post_key(post.id))
    cache.down = False  # back, but the invalidation has not been retried yet
    loads = repository.loads
    assert (await service.read_post(post.id)).etag == etag(2)  # bypassed, not the cached v1
    assert repository.loads == loads + 1
