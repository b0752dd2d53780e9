"""`postal cache warm | invalidate` as an operator runs them: a real process, the session's
PostgreSQL and Redis, a running service beside it (in-process) that must see the effects."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from sqlalchemy import text

from postal.posts.cache_keys import LIST_GENERATION
from postal_testing.proxy import FaultProxy
from tests.e2e.test_import_cli import environment, postgres_env
from tests.e2e.test_serve import run_postal
from tests.integration.api_support import AUTH, Api, running_api

TIMEOUT = 60  # seconds any one command may take here


async def postal_cache(
    cwd: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(run_postal, cwd, "cache", *args, env=env, timeout=TIMEOUT)
    print(result.stdout, result.stderr)  # shown by pytest when the test fails
    return result


def report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


async def create_posts(api: Api, count: int) -> list[dict[str, Any]]:
    return [await api.create(title=f"post {i}") for i in range(count)]


def post_key(prefix: str, post_id: int) -> str:
    return f"{prefix}post:{{{post_id}}}"


async def test_warm_top_fills_the_newest_posts_and_leaves_cached_ones_alone(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    env = postgres_env(database_url, redis_url, key_prefix)
    async with running_api(database_url, redis_url, key_prefix) as api:
        posts = await create_posts(api, 5)
        newest = [post["id"] for post in posts[-3:]]
        first = await postal_cache(tmp_path, "warm", "--top", "3", "--json", env=env)
        assert first.returncode == 0, first.stderr
        assert report(first) | {"database_error": None} == {
            "requested": 3, "cached": 0, "filled": 3, "stale": 0, "not_filled": 0,
            "not_found": 0, "database_error": None,
        }  # fmt: skip
        cached = await raw_redis.mget([post_key(key_prefix, p["id"]) for p in posts])
        assert [value is not None for value in cached] == [False, False, True, True, True]
        # The service reads them from Redis: no SELECT.
        selects = len(api.post_selects)
        for post_id in newest:
            assert (await api.client.get(f"/api/v1/posts/{post_id}")).status_code == 200
        assert len(api.post_selects) == selects
        again = await postal_cache(tmp_path, "warm", "--top", "3", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert (report(again)["cached"], report(again)["filled"]) == (3, 0)


async def test_warm_file_reads_the_ids_listed_and_a_bad_file_changes_nothing(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    env = postgres_env(database_url, redis_url, key_prefix)
    async with running_api(database_url, redis_url, key_prefix) as api:
        posts = await create_posts(api, 3)
        first, missing = posts[0]["id"], posts[-1]["id"] + 100
        bad = tmp_path / "bad.txt"
        bad.write_text(f"{first}\nforty-two\n")
        refused = await postal_cache(tmp_path, "warm", str(bad), env=env)
        assert refused.returncode == 2
        assert "bad.txt:2: 'forty-two' is not a post id" in refused.stderr
        assert await raw_redis.get(post_key(key_prefix, first)) is None  # nothing was read
        good = tmp_path / "ids.txt"
        good.write_text(f"# the hot ones\n{first}\n\n{missing}\n")
        result = await postal_cache(tmp_path, "warm", str(good), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert report(result)["requested"] == 2
    assert report(result)["filled"] == 2  # the post, and the 404 of the missing one
    assert report(result)["not_found"] == 1
    assert await raw_redis.get(post_key(key_prefix, first)) is not None


async def test_invalidate_ids_reaches_the_running_service_through_redis(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    """The service caches a post (in Redis and in its near cache); the post is changed behind
    its back in the database; `postal cache invalidate` makes the service read it anew."""
    env = postgres_env(database_url, redis_url, key_prefix)
    async with running_api(database_url, redis_url, key_prefix) as api:
        post = (await create_posts(api, 1))[0]
        url = f"/api/v1/posts/{post['id']}"
        for _ in range(3):
            await api.client.get(url)
            await api.settle()
        async with api.state.engine.begin() as connection:  # behind the service's back
            await connection.execute(
                text("UPDATE posts SET title = 'changed' WHERE id = :id"), {"id": post["id"]}
            )
        assert (await api.client.get(url)).json()["title"] == post["title"]  # still cached
        list_generation = await raw_redis.get(f"{key_prefix}{LIST_GENERATION}")
        result = await postal_cache(tmp_path, "invalidate", str(post["id"]), "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert report(result) == {
            "invalidated": 1, "batches": 1, "pending": 0, "list_pages": True,
        }  # fmt: skip
        assert await raw_redis.get(post_key(key_prefix, post["id"])) is None
        assert await raw_redis.get(f"{key_prefix}{LIST_GENERATION}") != list_generation
        deadline = asyncio.get_running_loop().time() + 5  # the near cache's push, at most
        while (await api.client.get(url)).json()["title"] != "changed":
            assert asyncio.get_running_loop().time() < deadline, "the service kept the old one"
            await asyncio.sleep(0.05)


async def test_invalidate_all_walks_every_post_in_batches(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
) -> None:
    from postal.cli.cache_run import standalone_admin
    from postal.settings import load_settings

    async with running_api(database_url, redis_url, key_prefix) as api:
        posts = await create_posts(api, 7)
        for post in posts:
            await api.client.get(f"/api/v1/posts/{post['id']}")
        await api.settle()
    keys = [post_key(key_prefix, p["id"]) for p in posts]
    assert all(value is not None for value in await raw_redis.mget(keys))
    settings = load_settings(postgres_env(database_url, redis_url, key_prefix))
    done: list[int] = []
    # Batches of 3: what the command does with 1,000, over more than one batch.
    async with standalone_admin(settings, (redis_url, redis_url), invalidate_batch=3) as admin:
        result = await admin.invalidate_all(done.append)
    assert (result.invalidated, result.batches, result.pending) == (7, 3, 0)
    assert done == [3, 6, 7]
    assert all(value is None for value in await raw_redis.mget(keys))


async def test_invalidate_stops_at_a_batch_redis_does_not_take(
    tmp_path: Path,
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
) -> None:
    async with running_api(database_url, redis_url, key_prefix) as api:
        posts = await create_posts(api, 2)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultProxy(port) as proxy:
        await proxy.refuse()
        env = postgres_env(database_url, proxy.url, key_prefix)
        ids = [str(post["id"]) for post in posts]
        result = await postal_cache(
            tmp_path, "invalidate", *ids, "--cache-wait", "0.5", "--json", env=env
        )
    assert result.returncode == 3
    assert report(result) == {"invalidated": 0, "batches": 1, "pending": 2, "list_pages": False}


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["invalidate", "1"], 0, "nothing to invalidate"),
        (["warm", "--top", "5"], 1, "nothing to warm"),
        (["invalidate"], 2, "either post ids or --all"),
        (["invalidate", "3", "--all"], 2, "either post ids or --all"),
        (["invalidate", "0"], 2, "'0' is not a post id"),
        (["warm"], 2, "either --top N or a FILE"),
    ],
)
def test_without_a_running_service_or_with_bad_usage(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    """The embedded default with no `postal serve` running: nothing is cached."""
    result = run_postal(tmp_path, "cache", *args, env=environment(), timeout=TIMEOUT)
    assert result.returncode == code, result.stderr
    assert said in result.stdout + result.stderr


async def test_a_write_during_warming_is_never_overwritten(
    tmp_path: Path, database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    """Warming and writing at once: whatever the interleaving, once both are done the cache
    holds the post as written (the guarded fill refuses what the write replaced)."""
    env = postgres_env(database_url, redis_url, key_prefix)
    async with running_api(database_url, redis_url, key_prefix) as api:
        posts = await create_posts(api, 40)
        warming = asyncio.ensure_future(
            postal_cache(tmp_path, "warm", "--top", "40", "--json", env=env)
        )
        for round_ in range(5):
            for post in posts[::4]:
                update = {"title": f"v{round_}", "body": "b", "author": "a"}
                path = f"/api/v1/posts/{post['id']}"
                assert (await api.client.put(path, json=update, headers=AUTH)).status_code == 200
        result = await warming
        assert result.returncode in (0, 3), result.stderr
        for post in posts[::4]:
            assert (await api.client.get(f"/api/v1/posts/{post['id']}")).json()["title"] == "v4"
