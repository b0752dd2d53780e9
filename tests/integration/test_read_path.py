"""The read path through the service: single-flight, the stale-fill guard in a forced race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from postal.posts.models import Post
from postal.storage.repository import PostRepository
from tests.integration.api_support import AUTH, Api, running_api
from tests.integration.helpers import eventually


@pytest.fixture
async def api(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> AsyncIterator[Api]:
    # 100 requests in one process load its event loop: a generous GET deadline keeps this test
    # about coalescing, not about deadlines (tested elsewhere).
    env = {"REDIS_GET_DEADLINE": "5s"}
    async with running_api(database_url, redis_url, key_prefix, **env) as running:
        yield running


class GatedRepository:
    """The real repository, whose `get` can be held after it has read, to force a race."""

    def __init__(self, inner: PostRepository) -> None:
        self._inner = inner
        self.loaded = asyncio.Event()
        self.release = asyncio.Event()
        self.gate = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, post_id: int) -> Post | None:
        post = await self._inner.get(post_id)
        if self.gate:
            self.loaded.set()
            await self.release.wait()
        return post


async def test_a_hundred_concurrent_misses_make_one_database_query(api: Api) -> None:
    post = await api.create()
    service = api.state.posts
    gated = GatedRepository(service._repository)
    service._repository = gated
    gated.gate = True  # hold the one load until every request has missed and joined it
    api.post_selects.clear()
    url = f"/api/v1/posts/{post['id']}"
    requests = [asyncio.create_task(api.client.get(url)) for _ in range(100)]
    await eventually(lambda: api.state.reads.stats().misses == 100)
    gated.release.set()
    responses = await asyncio.gather(*requests)
    assert {response.status_code for response in responses} == {200}
    assert {response.content for response in responses} == {responses[0].content}
    assert len(api.post_selects) == 1
    assert api.state.reads.stats().coalesced == 99


async def test_a_late_fill_of_an_old_version_never_reaches_readers(api: Api) -> None:
    post = await api.create(title="v1")
    url = f"/api/v1/posts/{post['id']}"
    service = api.state.posts
    gated = GatedRepository(service._repository)
    service._repository = gated
    gated.gate = True
    # 1. a reader misses and loads version 1 from the database, then is held
    reader = asyncio.create_task(api.client.get(url))
    await asyncio.wait_for(gated.loaded.wait(), 5)
    gated.gate = False
    # 2. a writer commits version 2 and invalidates; the write returns
    update = {"title": "v2", "body": "b", "author": "a"}
    assert (await api.client.put(url, json=update, headers=AUTH)).status_code == 200
    # 3. the reader's load completes; its fill of version 1 arrives after the write
    gated.release.set()
    assert (await reader).json()["title"] == "v1"  # it began before the write: fair
    await api.settle()
    assert api.state.reads.stats().fills_stale_rejected >= 1
    for _ in range(3):  # from now on, every read is version 2, from the cache or not
        assert (await api.client.get(url)).json()["title"] == "v2"
        await api.settle()
