"""Early refresh on a real Redis and a real database (SQLite and PostgreSQL), through the posts
service: a hot post read near its expiry is reloaded behind the reader, a write's invalidation
during that reload wins, the in-flight bound holds, hits from the near cache refresh too, and the
app wires it from its settings to its metric.

"Near its expiry" without waiting for it: a `warm` service fills the post with a TTL of 20 s
(as a fill from long ago would have left it), and the `hot` service reads it with its own TTL
of 10 minutes. The random draw is injected (0.01: due within 4.6 delta * beta of the expiry)
and delta's floor is 10 s, so a read 20 s before the expiry refreshes and a read 10 minutes
before it does not, on every run. The database's loads are held by a wrapper of the real
repository until the test lets them go, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as redis

from postal.cache import (
    CacheClient,
    CacheTimeouts,
    EarlyRefreshConfig,
    EarlyRefreshStats,
    Invalidator,
    NearCache,
    ReadThrough,
)
from postal.posts.cache_keys import post_key
from postal.posts.cursors import Cursors
from postal.posts.models import Post, PostContent
from postal.posts.ports import PostRepository
from postal.posts.service import CacheTtls, PostService
from postal.storage.db import create_engine
from postal.storage.repository import SqlPostRepository
from tests.integration.api_support import running_api
from tests.integration.helpers import eventually, make_client, small_profile

CURSORS = Cursors(b"k" * 32)  # list cursors' signing key: no page is read here
WARM_TTL = 20.0  # seconds left on the entry the hot reader finds
HOT_TTL = 600.0
# Generous deadlines: these tests are about what is loaded and filled, not about timing.
PROFILE = replace(small_profile(), timeouts=CacheTimeouts(get=5.0, set=5.0))
REFRESHING = EarlyRefreshConfig(min_delta=10.0)


class Draws:
    """The injected random: `value` every time."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class HeldRepository:
    """The real repository; its `get`s are counted and, while `hold` is set, wait for
    `release` after they have read the database (`loaded` is set then)."""

    def __init__(self, inner: PostRepository) -> None:
        self._inner = inner
        self.gets = 0
        self.hold = False
        self.loaded = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, post_id: int) -> Post | None:
        self.gets += 1
        post = await self._inner.get(post_id)
        if self.hold:
            self.loaded.set()
            await self.release.wait()
        return post


@dataclass
class Stack:
    cache: CacheClient
    repository: HeldRepository
    invalidator: Invalidator
    warm: PostService  # fills with WARM_TTL, refreshes nothing
    warm_reads: ReadThrough
    hot: PostService  # HOT_TTL, early refresh on

    def hot_service(self, reads: ReadThrough) -> PostService:
        ttls = CacheTtls(post=HOT_TTL)
        return PostService(self.repository, reads, self.invalidator, ttls, cursors=CURSORS)

    def hot_reads(
        self, *, config: EarlyRefreshConfig = REFRESHING, draws: Draws | None = None
    ) -> ReadThrough:
        return ReadThrough(
            self.cache,
            ttl_jitter=0.0,
            bypass=self.invalidator.is_pending,
            early_refresh=config,
            rng=draws or Draws(0.01),
        )

    async def create(self, title: str = "v1") -> Post:
        return await self.hot.create(PostContent(title=title, body="b", author="a"))

    async def warm_up(self, post_id: int) -> None:
        """Fill the post's entry with WARM_TTL left, as the hot reader will find it."""
        await self.warm.read_post(post_id)
        await self.warm_reads.drain(5.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "clean_database"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def stack(
    database: str, redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as cleanup:  # whatever was built is closed, even half a stack
        engine = create_engine(database, pool_size=5, timeout=5.0)
        cleanup.push_async_callback(engine.dispose)
        cache = make_client(redis_url, key_prefix, PROFILE)
        cleanup.push_async_callback(cache.aclose)
        await cache.start()
        invalidator = Invalidator(cache, give_up_after=60.0)
        cleanup.push_async_callback(invalidator.aclose)
        repository = HeldRepository(SqlPostRepository(engine))
        cleanup.callback(repository.release.set)  # nothing stays held past the test
        warm_reads = ReadThrough(cache, ttl_jitter=0.0, bypass=invalidator.is_pending)
        warm_ttls = CacheTtls(post=WARM_TTL)
        warm = PostService(repository, warm_reads, invalidator, warm_ttls, cursors=CURSORS)
        built = Stack(cache, repository, invalidator, warm, warm_reads, warm)
        built.hot = built.hot_service(built.hot_reads())
        yield built


def refreshes(reads: ReadThrough) -> EarlyRefreshStats:
    stats = reads.stats().early_refresh
    assert stats is not None
    return stats


async def test_a_hot_post_read_near_its_expiry_is_refreshed_behind_the_reader(
    stack: Stack, raw_redis: redis.Redis, key_prefix: str
) -> None:
    reads = stack.hot_reads()
    hot = stack.hot_service(reads)
    post = await stack.create()
    await stack.warm_up(post.id)
    key = key_prefix + post_key(post.id).key
    cached = await raw_redis.get(key)
    assert 0 < await raw_redis.pttl(key) <= WARM_TTL * 1000
    cached_entry = await stack.warm.read_post(post.id)  # a hit: what the cache holds

    stack.repository.gets = 0
    stack.repository.hold = True
    assert await hot.read_post(post.id) == cached_entry  # answered from the cache at once...
    await eventually(lambda: stack.repository.gets == 1)  # ...while the refresh loads
    assert refreshes(reads).in_flight == 1
    assert await raw_redis.get(key) == cached  # not refreshed yet: the load is held
    stack.repository.release.set()
    await reads.drain(5.0)

    assert stack.repository.gets == 1  # one load, for the refresh
    assert await raw_redis.pttl(key) > WARM_TTL * 1000  # its TTL moved forward
    stats = refreshes(reads)
    assert (stats.started, stats.refreshed, stats.failed) == (1, 1, 0)
    assert (reads.stats().hits, reads.stats().loads) == (1, 0)
    for _ in range(5):  # 10 minutes from its expiry now: nothing more to refresh
        assert await hot.read_post(post.id) == cached_entry
    await reads.drain(5.0)
    assert (refreshes(reads).started, stack.repository.gets) == (1, 1)


async def test_a_write_invalidated_during_the_refresh_wins(
    stack: Stack, raw_redis: redis.Redis, key_prefix: str
) -> None:
    reads = stack.hot_reads()
    hot = stack.hot_service(reads)
    post = await stack.create("v1")
    await stack.warm_up(post.id)
    key = key_prefix + post_key(post.id).key

    stack.repository.gets = 0
    stack.repository.hold = True
    assert b'"title":"v1"' in (await hot.read_post(post.id)).body  # the refresh starts...
    await asyncio.wait_for(stack.repository.loaded.wait(), 5)  # ...and has read v1, held now
    stack.repository.hold = False
    # A writer commits v2 and invalidates, while the refresh still holds v1.
    await hot.update(post.id, PostContent(title="v2", body="b", author="a"), expected=None)
    stack.repository.release.set()  # the refresh's fill of v1 goes out now, too late
    await reads.drain(5.0)

    stats = refreshes(reads)
    assert (stats.started, stats.stale_rejected, stats.refreshed) == (1, 1, 0)
    assert stack.repository.gets == 1
    assert await raw_redis.get(key) is None  # v1 was not written back
    assert b'"title":"v2"' in (await hot.read_post(post.id)).body


async def test_refreshes_past_the_in_flight_bound_are_dropped(stack: Stack) -> None:
    reads = stack.hot_reads(config=replace(REFRESHING, max_in_flight=2))
    hot = stack.hot_service(reads)
    posts = [await stack.create(f"p{n}") for n in range(5)]
    for post in posts:
        await stack.warm_up(post.id)
    cached = [await stack.warm.read_post(post.id) for post in posts]

    stack.repository.gets = 0
    stack.repository.hold = True
    assert [await hot.read_post(post.id) for post in posts] == cached  # none waited
    await eventually(lambda: stack.repository.gets == 2)
    stats = refreshes(reads)
    assert (stats.started, stats.in_flight, stats.dropped) == (2, 2, 3)
    stack.repository.release.set()
    await reads.drain(5.0)
    stats = refreshes(reads)
    assert (stats.refreshed, stats.in_flight, stack.repository.gets) == (2, 0, 2)


async def test_a_hit_from_the_near_cache_refreshes_the_redis_entry(
    stack: Stack, raw_redis: redis.Redis, key_prefix: str
) -> None:
    near = NearCache(key_prefix=stack.cache.key(""), max_bytes=1 << 20, ttl=30)
    tracking = stack.cache.tracking(near, heartbeat=0.1, dead_after=0.4)
    assert tracking is not None
    near.tracking = tracking
    tracking.start()
    try:
        await eventually(near.usable)
        draws = Draws(0.999999)  # not due yet: the first read only stores the entry in memory
        reads = ReadThrough(
            stack.cache,
            ttl_jitter=0.0,
            near=near,
            early_refresh=REFRESHING,
            rng=draws,
        )
        hot = stack.hot_service(reads)
        post = await stack.create()
        await stack.warm_up(post.id)
        key = key_prefix + post_key(post.id).key
        cached_entry = await hot.read_post(post.id)  # a Redis hit, now held in memory
        assert (reads.stats().hits, near.stats().stores) == (1, 1)

        draws.value = 0.01  # from here on, due
        stack.repository.gets = 0
        assert await hot.read_post(post.id) == cached_entry
        assert (near.stats().hits, reads.stats().hits) == (1, 1)  # from memory: Redis not asked
        await reads.drain(5.0)
        assert refreshes(reads).refreshed == 1
        assert stack.repository.gets == 1
        assert await raw_redis.pttl(key) > WARM_TTL * 1000
        # The refresh's write reached this process as an invalidation: the next read asks
        # Redis, and finds the new expiry (far: no second refresh).
        await eventually(lambda: near.stats().invalidated >= 1)
        assert await hot.read_post(post.id) == cached_entry
        assert reads.stats().hits == 2
        await reads.drain(5.0)
        assert refreshes(reads).started == 1
    finally:
        await tracking.aclose()


async def test_the_app_refreshes_early_from_its_settings_and_counts_it(
    clean_database: str, redis_url: str, key_prefix: str
) -> None:
    """No injected draw here: the settings make a refresh all but certain on every read
    (delta * beta = 6000 s against a TTL of 5 s: a read is not due with probability below
    1/1000), and the reads stop at the first."""
    env = {
        "POST_CACHE_TTL": "5s",
        "CACHE_EARLY_REFRESH_MIN_DELTA": "60s",
        "CACHE_EARLY_REFRESH_BETA": "100",
        "REDIS_GET_DEADLINE": "5s",
    }
    async with running_api(clean_database, redis_url, key_prefix, **env) as api:
        post = await api.create()
        url = f"/api/v1/posts/{post['id']}"
        first = await api.client.get(url)  # a miss: loaded and filled
        await api.settle()
        for _ in range(20):
            assert (await api.client.get(url)).content == first.content
            await api.settle()
            if refreshes(api.state.reads).refreshed:
                break
        assert refreshes(api.state.reads).refreshed >= 1
        metrics = (await api.client.get("/metrics")).text
        assert 'postal_cache_early_refreshes_total{outcome="refreshed"}' in metrics
        line = metrics.split('postal_cache_early_refreshes_total{outcome="refreshed"} ')[1]
        assert float(line.split()[0]) >= 1
        ready = (await api.client.get("/readyz")).json()
        assert ready["cache"]["reads"]["early_refresh"]["refreshed"] >= 1
