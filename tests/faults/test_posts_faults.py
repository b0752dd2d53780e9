"""The service when Redis is stopped, black-holed or refusing: reads answer 200, writes land."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from sqlalchemy import make_url

from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import RedisServer
from tests.integration.api_support import AUTH, running_api


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_reads_survive_a_stopped_redis_and_writes_still_land(
    database_url: str, clean_database: None, own_redis: RedisServer, key_prefix: str
) -> None:
    async with running_api(database_url, own_redis.url, key_prefix) as api:
        post = await api.create(title="before")
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()
        own_redis.stop()
        for _ in range(5):
            response = await api.client.get(url)
            assert response.status_code == 200
            assert response.json()["title"] == "before"
        assert (await api.client.get("/api/v1/posts")).status_code == 200
        # a write while Redis is down succeeds; its invalidation waits for Redis
        update = {"title": "after", "body": "b", "author": "a"}
        assert (await api.client.put(url, json=update, headers=AUTH)).status_code == 200
        assert api.state.invalidator.stats().failed >= 1
        assert (await api.client.get(url)).json()["title"] == "after"
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200  # the database serves every read: ready, degraded
        assert ready.json()["status"] == "degraded"
        assert ready.json()["degraded"] == ["cache"]
        assert ready.json()["cache"]["serves"] is False


async def test_a_failed_invalidation_is_retried_and_nothing_stale_is_served(
    database_url: str, clean_database: None, own_redis: RedisServer, key_prefix: str
) -> None:
    async with (
        FaultProxy(own_redis.port) as proxy,
        running_api(database_url, proxy.url, key_prefix) as api,
    ):
        post = await api.create(title="v1")
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()  # version 1 cached
        await proxy.refuse()
        update = {"title": "v2", "body": "b", "author": "a"}
        assert (await api.client.put(url, json=update, headers=AUTH)).status_code == 200
        await proxy.pass_through()
        # the cached v1 was never invalidated; this process must not serve it
        assert (await api.client.get(url)).json()["title"] == "v2"
        deadline = time.monotonic() + 10
        while api.state.invalidator.stats().pending_keys and time.monotonic() < deadline:
            await api.client.get("/healthz")
            await asyncio.sleep(0.05)
        assert api.state.invalidator.stats().pending_keys == 0
        await api.settle()
        for _ in range(3):
            assert (await api.client.get(url)).json()["title"] == "v2"
            await api.settle()


async def test_with_redis_black_holed_the_breaker_stops_reads_paying_the_deadline(
    database_url: str, clean_database: None, own_redis: RedisServer, key_prefix: str
) -> None:
    deadline = 0.2
    async with FaultProxy(own_redis.port) as proxy:
        env = {"REDIS_GET_DEADLINE": "200ms", "REDIS_BREAKER_COOLDOWN": "1m"}
        async with running_api(database_url, proxy.url, key_prefix, **env) as api:
            post = await api.create()
            url = f"/api/v1/posts/{post['id']}"
            await proxy.black_hole()
            breaker = api.state.cache.breaker("read")
            assert breaker is not None
            durations = []
            rejected = 0
            for count in range(20):
                if count == 10:
                    rejected = breaker.stats().rejected
                started = time.perf_counter()
                response = await api.client.get(url)
                durations.append(time.perf_counter() - started)
                assert response.status_code == 200
            assert api.state.cache.breaker_state("read").name == "OPEN"
            slow = [d for d in durations if d >= deadline * 0.9]
            # The failures that opened it (5), then none; plus any timeout the breaker took no
            # verdict from because this busy test process stalled through it (cache.loop_lag).
            excused = api.state.cache.excused_timeouts
            assert 1 <= len(slow) <= 5 + excused
            # The last ten paid nothing: the breaker refused each, and the database answered.
            assert breaker.stats().rejected - rejected == 10, durations


async def test_database_down_is_503_with_retry_after_and_nothing_hangs(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    url = make_url(database_url)
    async with FaultProxy(url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = {"DATABASE_TIMEOUT": "1s"}
        async with running_api(proxied, redis_url, key_prefix, **env) as api:
            post = await api.create()
            await proxy.refuse()
            for request in [
                api.client.get(f"/api/v1/posts/{post['id'] + 1}"),  # a miss: needs the database
                api.client.get("/api/v1/posts/1/versions"),
                api.client.post("/api/v1/posts", json={"title": "t", "body": "b", "author": "a"},
                                headers=AUTH),
            ]:  # fmt: skip
                started = time.perf_counter()
                response = await request
                assert time.perf_counter() - started < 5
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "database_unavailable"
                assert response.headers["retry-after"] == "1"
            ready = await api.client.get("/readyz")
            assert ready.status_code == 200  # the cache still serves what it holds
            assert ready.json()["database"]["reachable"] is False
            await proxy.pass_through()


async def test_a_write_refused_by_a_database_that_is_down_leaves_the_cache_alone(
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    """Refused connections fail the write before its COMMIT was sent: nothing was written, so
    the post's entry and the generations stay, and reads keep being answered from the cache."""
    url = make_url(database_url)
    async with FaultProxy(url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = {"DATABASE_TIMEOUT": "1s"}
        async with running_api(proxied, redis_url, key_prefix, **env) as api:
            post = await api.create(title="v1")
            path = f"/api/v1/posts/{post['id']}"
            await api.client.get(path)
            await api.settle()
            key = f"{key_prefix}post:{{{post['id']}}}"
            watched = [key, f"{key}:gen", f"{key_prefix}posts:list:{{pages}}:gen"]
            cached = await raw_redis.mget(watched)
            assert cached[0] is not None
            assert b'"v1"' in cached[0]
            invalidations = api.state.invalidator.stats().done
            await proxy.refuse()
            update = {"title": "v2", "body": "b", "author": "a"}
            response = await api.client.put(path, json=update, headers=AUTH)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["retry-after"] == "1"
            assert await raw_redis.mget(watched) == cached  # entry and generations untouched
            assert api.state.invalidator.stats().done == invalidations
            read = await api.client.get(path)  # the database refuses: only the cache can answer
            assert read.status_code == 200, read.text
            assert read.json() == post
            await proxy.pass_through()


@pytest.fixture
async def proxied_database(database_url: str, clean_database: None) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session's PostgreSQL; `proxied_url(proxy)` goes through."""
    url = make_url(database_url)
    async with FaultProxy(url.port or 5432) as proxy:
        yield proxy


def proxied_url(database_url: str, proxy: FaultProxy) -> str:
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


async def test_with_the_database_down_cached_reads_are_served_and_the_pod_stays_ready(
    database_url: str, proxied_database: FaultProxy, redis_url: str, key_prefix: str
) -> None:
    proxy = proxied_database
    env = {"DATABASE_TIMEOUT": "1s"}
    async with running_api(proxied_url(database_url, proxy), redis_url, key_prefix, **env) as api:
        cached, cold = await api.create(title="cached"), await api.create(title="cold")
        await api.client.get(f"/api/v1/posts/{cached['id']}")
        await api.client.get("/api/v1/posts")
        await api.settle()
        await proxy.refuse()

        ready = await api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        document = ready.json()
        assert document["status"] == "degraded"
        assert document["degraded"] == ["database"]
        assert "cached reads are answered" in document["message"]
        assert document["database"]["reachable"] is False
        assert document["cache"]["serves"] is True

        for _ in range(3):  # cached: answered, from Redis or from memory
            read = await api.client.get(f"/api/v1/posts/{cached['id']}")
            assert read.status_code == 200
            assert read.json() == cached
        assert (await api.client.get("/api/v1/posts")).status_code == 200  # the cached page

        miss = await api.client.get(f"/api/v1/posts/{cold['id']}")
        assert miss.status_code == 503
        assert miss.headers["retry-after"] == "1"
        assert miss.json()["error"]["code"] == "database_unavailable"
        assert miss.json()["error"]["message"] == (
            f"the database is unavailable, and post {cold['id']} is not in the cache; retry shortly"
        )
        update = {"title": "new", "body": "b", "author": "a"}
        write = await api.client.put(f"/api/v1/posts/{cached['id']}", json=update, headers=AUTH)
        assert write.status_code == 503
        assert write.headers["retry-after"] == "1"
        assert write.json()["error"]["message"] == (
            "the database is unavailable, and writes need it; retry shortly"
        )
        history = await api.client.get(f"/api/v1/posts/{cached['id']}/versions")  # never cached
        assert history.status_code == 503
        assert "this read is not in the cache" in history.json()["error"]["message"]

        await proxy.pass_through()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ok"
        assert ready.json()["degraded"] == []


async def test_with_the_database_and_the_cache_down_the_pod_is_unready(
    database_url: str, proxied_database: FaultProxy, own_redis: RedisServer, key_prefix: str
) -> None:
    proxy = proxied_database
    env = {"DATABASE_TIMEOUT": "1s"}
    url = proxied_url(database_url, proxy)
    async with running_api(url, own_redis.url, key_prefix, **env) as api:
        await proxy.refuse()
        own_redis.stop()
        # The near cache's tracking notices the closed connection at once, or its heartbeat
        # within 1.5 s: until then the pod may still say the cache serves.
        deadline = time.monotonic() + 10
        ready = await api.client.get("/readyz")
        while ready.status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            ready = await api.client.get("/readyz")
        assert ready.status_code == 503, ready.text
        document = ready.json()
        assert document["status"] == "unavailable"
        assert document["degraded"] == ["database", "cache"]
        assert document["cache"]["serves"] is False
        assert document["cache"]["answers"] is False
        assert document["cache"]["error"]  # why the PING failed, the address masked
        await proxy.pass_through()


async def test_ready_without_the_database_can_be_turned_off(
    database_url: str, proxied_database: FaultProxy, redis_url: str, key_prefix: str
) -> None:
    proxy = proxied_database
    env = {"DATABASE_TIMEOUT": "1s", "POSTAL_READY_WITHOUT_DATABASE": "false"}
    async with running_api(proxied_url(database_url, proxy), redis_url, key_prefix, **env) as api:
        await proxy.refuse()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["degraded"] == ["database"]
        assert ready.json()["cache"]["serves"] is True
        await proxy.pass_through()
        assert (await api.client.get("/readyz")).status_code == 200
