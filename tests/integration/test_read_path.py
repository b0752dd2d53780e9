"""The read path through the service: single-flight, the stale-fill guard in a forced race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.cache.policy import fallback
from postal.posts.models import Post, PostContent
from postal.posts.ports import PostRepository
from postal.storage.repository import SqlPostRepository
from postal_testing.redis_servers import free_port
from tests.integration.api_support import AUTH, Api, GatedRepository, running_api, running_gated
from tests.integration.helpers import eventually


@pytest.fixture
async def gated(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[Api, GatedRepository]]:
    # 100 requests in one process load its event loop: a generous GET deadline keeps this test
    # about coalescing, not about deadlines (tested elsewhere).
    env = {"REDIS_GET_DEADLINE": "5s"}
    async with running_gated(database_url, redis_url, key_prefix, **env) as running:
        yield running


async def test_a_hundred_concurrent_misses_make_one_database_query(
    gated: tuple[Api, GatedRepository],
) -> None:
    api, repository = gated
    post = await api.create()
    repository.gate = True  # hold the one load until every request has missed and joined it
    api.post_selects.clear()
    url = f"/api/v1/posts/{post['id']}"
    requests = [asyncio.create_task(api.client.get(url)) for _ in range(100)]
    await eventually(lambda: api.state.reads.stats().misses == 100)
    repository.release.set()
    responses = await asyncio.gather(*requests)
    assert {response.status_code for response in responses} == {200}
    assert {response.content for response in responses} == {responses[0].content}
    assert len(api.post_selects) == 1
    assert api.state.reads.stats().coalesced == 99


async def test_a_late_fill_of_an_old_version_never_reaches_readers(
    gated: tuple[Api, GatedRepository],
) -> None:
    api, repository = gated
    post = await api.create(title="v1")
    url = f"/api/v1/posts/{post['id']}"
    repository.gate = True
    # 1. a reader misses and loads version 1 from the database, then is held
    reader = asyncio.create_task(api.client.get(url))
    await asyncio.wait_for(repository.loaded.wait(), 5)
    repository.gate = False
    # 2. a writer commits version 2 and invalidates; the write returns
    update = {"title": "v2", "body": "b", "author": "a"}
    assert (await api.client.put(url, json=update, headers=AUTH)).status_code == 200
    # 3. the reader's load completes; its fill of version 1 arrives after the write
    repository.release.set()
    assert (await reader).json()["title"] == "v1"  # it began before the write: fair
    await api.settle()
    assert api.state.reads.stats().fills_stale_rejected >= 1
    for _ in range(3):  # from now on, every read is version 2, from the cache or not
        assert (await api.client.get(url)).json()["title"] == "v2"
        await api.settle()


@pytest.fixture
async def gated_without_cache(
    database_url: str, clean_database: None, key_prefix: str
) -> AsyncIterator[tuple[Api, GatedRepository]]:
    """As `gated`, with the Redis URL pointing where nothing listens."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gated(database_url, nowhere, key_prefix) as running:
        yield running


async def test_with_redis_unreachable_reads_share_loads_but_never_one_older_than_a_write(
    gated_without_cache: tuple[Api, GatedRepository], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty readers share one load, and a reader who comes after a write of this process does
    not join one begun before it. The 10 ms join window (tested on a set clock in the unit
    tests) is widened here: on a loaded machine fifty readers' refused dials spread over more."""
    monkeypatch.setattr(fallback, "UNGUARDED_JOIN_WINDOW", 3600.0)
    api, repository = gated_without_cache
    post = await api.create(title="v1")
    url = f"/api/v1/posts/{post['id']}"
    repository.gate = True
    readers = [asyncio.create_task(api.client.get(url)) for _ in range(50)]
    await eventually(lambda: api.state.reads.stats().coalesced == 49)
    repository.release.set()
    assert {(await reader).json()["title"] for reader in readers} == {"v1"}
    assert api.state.reads.stats().loads == 1  # one query for fifty readers, cache or no cache
    # a reader held after loading v1; a write returns; a reader arriving now must not join it
    repository.release.clear()
    repository.loaded.clear()
    repository.gate = True
    early = asyncio.create_task(api.client.get(url))
    await asyncio.wait_for(repository.loaded.wait(), 5)
    repository.gate = False
    update = {"title": "v2", "body": "b", "author": "a"}
    assert (await api.client.put(url, json=update, headers=AUTH)).status_code == 200
    assert (await api.client.get(url)).json()["title"] == "v2"
    repository.release.set()
    assert (await early).json()["title"] == "v1"  # it began before the write: fair


class HangsAfterCommit:
    """The real repository, whose `update` commits and then hangs, as a request cancelled by a
    shutdown's deadline at the COMMIT would: the write has landed, the caller never hears."""

    def __init__(self, inner: PostRepository) -> None:
        self._inner = inner
        self.committed = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def update(self, post_id: int, content: PostContent, **kwargs: object) -> Post:
        post = await self._inner.update(post_id, content, **kwargs)  # type: ignore[arg-type]
        self.committed.set()
        await asyncio.Event().wait()  # never returns: only cancellation ends it
        return post


async def test_a_write_cancelled_after_its_commit_still_invalidates(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    built: list[HangsAfterCommit] = []

    def repository(engine: AsyncEngine) -> PostRepository:
        built.append(HangsAfterCommit(SqlPostRepository(engine)))
        return built[-1]  # type: ignore[return-value]

    async with running_api(database_url, redis_url, key_prefix, repository) as api:
        post = await api.create(title="v1")
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()
        assert (await api.client.get(url)).json()["title"] == "v1"  # cached
        service = api.state.posts
        update = asyncio.create_task(
            service.update(post["id"], PostContent("v2", "b", "a"), expected=None)
        )
        await built[0].committed.wait()
        update.cancel()
        with pytest.raises(asyncio.CancelledError):
            await update
        assert (await api.client.get(url)).json()["title"] == "v2"
