"""Shared fixtures: a Redis to talk to, and a key prefix of each test's own.

Integration tests use the Redis on 127.0.0.1:6379 when it answers, each test under its own key
prefix so that runs never see each other's keys (nor anyone else's); when it does not answer, one
child redis-server is started for the session. Tests that must kill, slow or reconfigure a server
start their own with `tests.support.redis_server`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis

from tests.support.redis_server import RedisServer, answers_ping

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


@pytest.fixture
def key_prefix() -> str:
    return f"postal-test:{uuid.uuid4().hex[:12]}:"


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
