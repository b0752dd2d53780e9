"""The coarse invalidation, on real Redis, a real cluster and real PostgreSQL: past
CACHE_MAX_PENDING_INVALIDATIONS pending keys, every slot's epoch is bumped instead, and once that
lands no process serves what was cached before it (its near cache included), on one Redis and in
a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from postal.cache import CacheClient, GuardedFill, all_epoch_keys, guarded
from postal.cache.transport import TUNED
from postal_testing.cluster_set import ClusterSet
from postal_testing.proxy import FaultProxy
from tests.integration.api_support import running_api
from tests.integration.helpers import eventually
from tests.integration.test_import_api import csv_bytes, import_csv

CAP = "20"  # CACHE_MAX_PENDING_INVALIDATIONS: an import of 50 posts goes past it


async def test_an_import_while_redis_refuses_falls_back_to_one_coarse_invalidation(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with (
        FaultProxy(upstream) as proxy,
        running_api(
            database_url, proxy.url, key_prefix, CACHE_MAX_PENDING_INVALIDATIONS=CAP
        ) as importer,
        running_api(database_url, redis_url, key_prefix) as other,  # another process
    ):
        posts = [await other.create(title="before") for _ in range(50)]
        urls = [f"/api/v1/posts/{post['id']}" for post in posts]
        for _ in range(3):  # cached in Redis, then in the other's near cache
            for url in urls:
                assert (await other.client.get(url)).json()["title"] == "before"
            await other.settle()
        assert other.state.near.stats().entries >= len(urls)

        await proxy.refuse()
        rows = [{"id": p["id"], "title": "after", "body": "b", "author": "a"} for p in posts]
        response = await import_csv(importer, csv_bytes(rows))
        assert response.status_code == 200, response.text
        assert response.json()["cache"]["pending"] is True
        invalidator = importer.state.invalidator
        stats = invalidator.stats()
        assert (stats.coarse, stats.pending_keys) == (1, 0)  # bounded: not one entry a key
        assert stats.pending_generations == len(all_epoch_keys()) + 1  # + the list pages'
        assert invalidator.is_pending(guarded("post", "123456789"))  # every key is bypassed
        # the importing process reads from the database meanwhile
        assert (await importer.client.get(urls[0])).json()["title"] == "after"

        await proxy.pass_through()
        await eventually(lambda: invalidator.stats().pending_generations == 0, timeout=30)
        retries = invalidator.stats().retries
        assert retries >= len(all_epoch_keys()) // 500  # in batches, never the table at once
        await eventually(lambda: other.state.near.stats().entries == 0, timeout=10)
        titles = [(await other.client.get(url)).json()["title"] for url in urls]
        assert titles == ["after"] * len(urls)  # no process serves what was cached before


@pytest.fixture(params=["redis", "cluster"])
async def cache(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[CacheClient]:
    if request.param == "cluster":
        cluster: ClusterSet = request.getfixturevalue("redis_cluster")
        url = cluster.url
    else:
        url = redis_url
    client = CacheClient.create(read_url=url, write_url=url, profile=TUNED, key_prefix=key_prefix)
    await client.start()
    try:
        yield client
    finally:
        await client.aclose()


async def test_bumping_every_epoch_makes_every_value_a_miss_and_refuses_late_fills(
    cache: CacheClient,
) -> None:
    keys = [guarded("post", str(number)) for number in range(300)]  # spread over the slots
    seen = []
    for key in keys:
        found = await cache.get_guarded(key)
        assert await cache.fill_guarded(key, found.generation, b"old", ttl=60)
        seen.append(found.generation)
    assert [(await cache.get_guarded(key)).payload for key in keys] == [b"old"] * len(keys)

    epochs = list(all_epoch_keys())
    for start in range(0, len(epochs), 500):
        await cache.invalidate([], epochs[start : start + 500], timeout=5.0)

    after = [await cache.get_guarded(key) for key in keys]
    assert [found.payload for found in after] == [None] * len(keys)
    assert all(found.generation != old for found, old in zip(after, seen, strict=True))
    # a load that read the database before the bump cannot fill afterwards
    late = zip(keys, seen, strict=True)
    refused = [await cache.fill_guarded(k, old, b"late", ttl=60) for k, old in late]
    assert not any(refused)
    # a read after the bump fills and hits as before
    assert await cache.fill_guarded(keys[0], after[0].generation, b"new", ttl=60)
    assert (await cache.get_guarded(keys[0])).payload == b"new"
    # and the import's batch form quotes the epoch in the generations it returns
    (generation,) = await cache.invalidate_many([keys[1]])
    assert generation == (await cache.get_guarded(keys[1])).generation
    assert await cache.fill_guarded_many([GuardedFill(keys[1], generation, b"warm", 60)]) == 1
    assert (await cache.get_guarded(keys[1])).payload == b"warm"
    stale = GuardedFill(keys[2], seen[2], b"late", 60)
    assert await cache.fill_guarded_many([stale]) == 0
