"""Shared fixtures: a Redis to talk to, a key prefix of each test's own, and databases.

Integration tests use the Redis on 127.0.0.1:6379 when it answers (and the posts API suite runs a
second time on `redis_cluster`, a Redis Cluster of the session's own), each test under its own key
prefix so that runs never see each other's keys (nor anyone else's); when it does not answer, one
child redis-server is started for the session. Tests that must kill, slow or reconfigure a server
start their own with `postal_testing.redis_servers`.

Databases: `database_url` is a migrated PostgreSQL database of the session's own, `clean_database`
the same emptied for one test, `postgres_engine` an engine on it, `empty_database_url` a new
unmigrated PostgreSQL database for one test, and `sqlite_url` a migrated SQLite file in the
test's tmp_path (see tests.support.database).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as redis
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.storage.db import create_engine
from postal.storage.migrate import upgrade
from postal_testing.cluster_set import ClusterSet
from postal_testing.redis_servers import RedisServer, answers_ping
from tests.support.database import session_database, truncate, unmigrated_database

SHARED_HOST, SHARED_PORT = "127.0.0.1", 6379


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if answers_ping(SHARED_HOST, SHARED_PORT):
        yield f"redis://{SHARED_HOST}:{SHARED_PORT}/0"
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSet]:
    """A Redis Cluster of three masters on loopback ports, for the session (started on first use:
    about a second)."""
    with ClusterSet(masters=3) as cluster:
        yield cluster


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; whatever the test (or a process it ran) wrote under it
    is deleted afterwards, so no run leaves keys behind in the shared Redis."""
    prefix = f"postal-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = sync_redis.Redis.from_url(redis_url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except sync_redis.ConnectionError:
        pass  # the test stopped or replaced the Redis: nothing of ours is left to delete
    finally:
        client.close()


@pytest.fixture
async def raw_redis(redis_url: str, key_prefix: str) -> AsyncIterator[redis.Redis]:
    """A plain redis-py client to check what Postal wrote; deletes the test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{key_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- databases -----------------------------------------------------------------------------------
# PostgreSQL: one migrated database per session (tests.support.database), emptied before each test
# that asks for `clean_database`. SQLite: a migrated file in the test's own tmp_path.


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The postgresql+asyncpg:// URL of this session's migrated database (rows may be left over)."""
    with session_database() as url:
        yield url


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own with nothing in it, not even migrations."""
    with unmigrated_database() as url:
        yield url


@pytest.fixture
async def clean_database(database_url: str) -> str:
    """`database_url`, with posts and post_versions emptied and ids restarting at 1."""
    await truncate(database_url)
    return database_url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """The sqlite+aiosqlite:// URL of a migrated SQLite file of this test's own."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'postal.db'}"
    await upgrade(url)
    return url


@pytest.fixture
async def postgres_engine(clean_database: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the emptied session database; disposed after the test."""
    engine = create_engine(clean_database, pool_size=5, timeout=5.0)
    try:
        yield engine
    finally:
        await engine.dispose()
