"""A write the database fails: before its COMMIT was sent (nothing written, the cache left alone)
or at the COMMIT (it may have landed: invalidated all the same). Real PostgreSQL, real Redis.

The failure at the COMMIT is a real one: a deferred constraint trigger, which runs inside the
COMMIT, terminates its own backend, so the client sees its connection closed in the middle of the
COMMIT, as it would if the server or the network died just then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from sqlalchemy import make_url, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.posts.errors import DatabaseUnavailable, NothingWritten
from postal.posts.models import PostContent
from postal.storage.db import create_engine, write_transaction
from postal.storage.repository import SqlPostRepository
from postal.storage.tables import posts
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import free_port
from tests.integration.api_support import AUTH, running_api

FIRST = PostContent(title="v1", body="b", author="a")
DIES_AT_COMMIT = "dies at its commit"  # the title that sets the trigger off

_TRIGGER = (
    "CREATE FUNCTION postal_test_die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER postal_test_die_at_commit AFTER UPDATE ON posts"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
    f" WHEN (NEW.title = '{DIES_AT_COMMIT}') EXECUTE FUNCTION postal_test_die_at_commit()",
)
_NO_TRIGGER = (
    "DROP TRIGGER IF EXISTS postal_test_die_at_commit ON posts",
    "DROP FUNCTION IF EXISTS postal_test_die_at_commit()",
)


@pytest.fixture
async def dies_at_commit(postgres_engine: AsyncEngine) -> AsyncIterator[None]:
    """While the test runs, a write that sets a post's title to DIES_AT_COMMIT loses its
    connection during its COMMIT (and the COMMIT does not land)."""
    async with postgres_engine.begin() as connection:
        for statement in _TRIGGER:
            await connection.execute(text(statement))
    try:
        yield
    finally:
        async with postgres_engine.begin() as connection:
            for statement in _NO_TRIGGER:
                await connection.execute(text(statement))


async def title_of(engine: AsyncEngine, post_id: int) -> str:
    async with engine.connect() as connection:
        result = await connection.execute(select(posts.c.title).where(posts.c.id == post_id))
        return str(result.scalar_one())


# -- the storage layer tells the two apart --------------------------------------------------------


async def test_a_refused_connection_fails_a_write_before_its_commit() -> None:
    url = f"postgresql+asyncpg://postal@127.0.0.1:{free_port()}/x"
    engine = create_engine(url, pool_size=1, timeout=1.0)
    try:
        with pytest.raises(NothingWritten, match="ConnectionRefusedError"):
            await SqlPostRepository(engine).update(1, FIRST, expected_version=None)
    finally:
        await engine.dispose()


async def test_a_connection_lost_inside_the_transaction_fails_it_before_its_commit(
    postgres_engine: AsyncEngine,
) -> None:
    post = await SqlPostRepository(postgres_engine).create(FIRST)
    url = make_url(postgres_engine.url.render_as_string(hide_password=False))
    async with FaultProxy(url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        engine = create_engine(proxied, pool_size=1, timeout=2.0)

        async def write_and_lose_the_connection() -> None:
            async with write_transaction(engine) as connection:
                changed = update(posts).where(posts.c.id == post.id).values(title="lost")
                await connection.execute(changed)
                await proxy.reset()  # the connection dies before the COMMIT
                await connection.execute(text("SELECT 1"))

        try:
            with pytest.raises(NothingWritten):
                await write_and_lose_the_connection()
        finally:
            await engine.dispose()
    assert await title_of(postgres_engine, post.id) == FIRST.title


async def test_a_connection_lost_during_the_commit_may_have_landed(
    postgres_engine: AsyncEngine, dies_at_commit: None
) -> None:
    repository = SqlPostRepository(postgres_engine)
    post = await repository.create(FIRST)
    content = PostContent(title=DIES_AT_COMMIT, body="b", author="a")
    with pytest.raises(DatabaseUnavailable) as raised:
        await repository.update(post.id, content, expected_version=None)
    assert not isinstance(raised.value, NothingWritten)


# -- and the service invalidates only when the write may have landed ------------------------------


async def test_a_write_that_fails_at_its_commit_still_invalidates(
    database_url: str,
    postgres_engine: AsyncEngine,
    dies_at_commit: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    async with running_api(database_url, redis_url, key_prefix) as api:
        post = await api.create(title="v1")
        path = f"/api/v1/posts/{post['id']}"
        await api.client.get(path)
        await api.settle()
        key = f"{key_prefix}post:{{{post['id']}}}"
        watched = [key, f"{key}:gen", f"{key_prefix}posts:list:{{pages}}:gen"]
        entry, post_generation, list_generation = await raw_redis.mget(watched)
        assert entry is not None
        assert b'"v1"' in entry
        document = {"title": DIES_AT_COMMIT, "body": "b", "author": "a"}
        response = await api.client.put(path, json=document, headers=AUTH)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.headers["retry-after"] == "1"
        after = await raw_redis.mget(watched)
        assert after[0] is None  # the entry is gone...
        assert after[1] != post_generation  # ...and late fills of it are refused
        assert after[2] != list_generation  # the pages too
        read = await api.client.get(path)
        assert read.status_code == 200, read.text
        assert read.json()["title"] == await title_of(postgres_engine, post["id"])
