"""The posts app over ASGI on a clean database, for the API test modules.

Every test that takes `api` runs twice: on one Redis (`redis`) and on a Redis Cluster of three
masters (`cluster`), so the whole posts API suite holds on both. `api_redis` is a plain redis-py
client on whichever the test's `api` uses, to look at or tamper with what the service stored.
`own_redis` is a Redis server of the test's own; `two_servers` two, to make a primary and a
replica of.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from postal_testing.cluster_set import ClusterSet
from postal_testing.redis_servers import RedisServer
from tests.integration.api_support import Api, running_api


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, to restart, stop or flush; removed afterwards."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def two_servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two Redis servers of the test's own, started, not yet replicating; removed afterwards."""
    primary, replica = RedisServer(), RedisServer()
    try:
        primary.start()
        replica.start()
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


@pytest.fixture(params=["redis", "cluster"])
def cache_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """READ_REDIS_URL of the test's API: the shared Redis, or the session's cluster."""
    if request.param == "cluster":
        cluster: ClusterSet = request.getfixturevalue("redis_cluster")
        return cluster.url
    return redis_url


@pytest.fixture
async def api(
    database_url: str, clean_database: None, cache_url: str, key_prefix: str
) -> AsyncIterator[Api]:
    async with running_api(database_url, cache_url, key_prefix) as running:
        yield running


@pytest.fixture
async def api_redis(cache_url: str) -> AsyncIterator[redis.Redis | RedisCluster]:
    """A redis-py client on the Redis (or cluster) the test's `api` uses."""
    if cache_url.startswith("redis+cluster://"):
        host, port = cache_url.removeprefix("redis+cluster://").split(",")[0].split(":")
        cluster = RedisCluster(host=host, port=int(port))
        try:
            yield cluster
        finally:
            await cluster.aclose()
        return
    client = redis.Redis.from_url(cache_url)
    try:
        yield client
    finally:
        await client.aclose()
