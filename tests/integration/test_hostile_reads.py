"""Reads as a hostile client makes them (issue 17): made-up list cursors, large pages, a post's
whole history in one answer. Real PostgreSQL and real Redis, the app over ASGI.

- A cursor this deployment did not give out is a 422, and mints no cache key: Redis's key count
  and memory stay where they were, however many are sent.
- A page of posts is at most POSTAL_MAX_PAGE_BYTES, and so is any page the cache holds.
- A post's versions come a page at a time, without their bodies; one version's body is read
  alone.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from postal.posts.cursors import CURSOR_CHARS
from postal_testing.redis_servers import RedisServer
from tests.integration.api_support import AUTH, Api, running_api

# JSON writes each of these as `\u0001`: six bytes a character, the largest growth it allows.
ESCAPED = "\x01"


def forged_cursors(count: int, seed: int = 7) -> Iterator[str]:
    """What a client can make up: the earlier releases' `p<id>` for any id (accepted then, each
    a new cache key), random strings of a real cursor's length and alphabet, and real-looking
    ones with a character changed."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for n in range(count):
        kind = n % 3
        if kind == 0:
            raw = f"p{rng.randint(1, 2**63 - 1)}".encode()
            yield base64.urlsafe_b64encode(raw).decode().rstrip("=")
        else:
            yield "".join(rng.choice(alphabet) for _ in range(CURSOR_CHARS))


async def keys_under(client: redis.Redis | RedisCluster, prefix: str) -> set[bytes]:
    return {key async for key in client.scan_iter(match=f"{prefix}*", count=1000)}


async def test_forged_cursors_are_refused_and_mint_no_cache_key(
    api: Api, api_redis: redis.Redis | RedisCluster, key_prefix: str
) -> None:
    for n in range(30):
        await api.create(title=f"P{n}")
    first = await api.client.get("/api/v1/posts?limit=10")  # a real page, cached
    await api.settle()
    keys_before = await keys_under(api_redis, key_prefix)
    selects_before = len(api.post_selects)
    refused = 0
    for cursor in forged_cursors(300):
        response = await api.client.get(f"/api/v1/posts?limit=10&cursor={cursor}")
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["error"]["field"] == "cursor"
        refused += 1
    real = first.json()["next_cursor"]
    tampered = real[:5] + ("B" if real[5] == "A" else "A") + real[6:]
    assert (await api.client.get(f"/api/v1/posts?cursor={tampered}")).status_code == 422
    await api.settle()
    assert refused == 300
    assert await keys_under(api_redis, key_prefix) == keys_before
    assert len(api.post_selects) == selects_before  # not one of them reached the database


async def test_the_cursors_given_out_bound_the_pages_that_can_be_cached(
    api: Api, api_redis: redis.Redis | RedisCluster, key_prefix: str
) -> None:
    """Walking every page at every limit is all a client can do with real cursors: the page
    keys are at most one per (limit, position some page ended at), whatever it sends."""
    posts = 12
    for n in range(posts):
        await api.create(title=f"P{n}")
    for limit in (1, 5, 100):
        cursor, pages = None, 0
        while True:
            query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = (await api.client.get(f"/api/v1/posts?{query}")).json()
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == -(-posts // limit)
    await api.settle()
    page_keys = [key for key in await keys_under(api_redis, key_prefix) if b":list:" in key]
    generation = 1  # the pages' shared generation counter
    assert len(page_keys) <= generation + posts + 3 + 1  # limit 1: 12 pages, 5: 3, 100: 1


@pytest.mark.redis_server
async def test_many_forged_cursors_leave_redis_memory_where_it_was(
    database_url: str, clean_database: None, key_prefix: str
) -> None:
    """The issue's numbers: 10 GETs with made-up cursors took Redis from 1 MB to 242 MB. On a
    Redis of its own, with posts whose JSON is as large as escaping makes it: 200 made-up
    cursors, and the key count is the same, and memory within what a client connection's
    buffers move (Redis counts them in used_memory)."""
    server = RedisServer()
    server.start()
    try:
        async with running_api(database_url, server.url, key_prefix) as api:
            for _ in range(10):
                await api.create(body=ESCAPED * 50_000)  # 300 kB of JSON each
            await api.client.get("/api/v1/posts?limit=100")
            await api.settle()
            client = redis.Redis.from_url(server.url)
            try:
                keys_before = await client.dbsize()
                memory_before = int((await client.info("memory"))["used_memory"])
                for cursor in forged_cursors(200, seed=11):
                    response = await api.client.get(f"/api/v1/posts?limit=100&cursor={cursor}")
                    assert response.status_code == 422
                await api.settle()
                keys_after = await client.dbsize()
                memory_after = int((await client.info("memory"))["used_memory"])
            finally:
                await client.aclose()
    finally:
        server.cleanup()
    assert keys_after == keys_before
    assert memory_after - memory_before < 256 * 1024, (memory_before, memory_after)


async def test_pages_and_the_cached_pages_stay_within_the_page_bytes(
    database_url: str,
    clean_database: None,
    cache_url: str,
    key_prefix: str,
    api_redis: redis.Redis | RedisCluster,
) -> None:
    limit = 64 * 1024
    env = {"POSTAL_MAX_PAGE_BYTES": str(limit)}
    async with running_api(database_url, cache_url, key_prefix, **env) as api:
        for _ in range(8):
            await api.create(body=ESCAPED * 4_000)  # about 24 kB of JSON each
        seen, cursor, sizes = [], None, []
        while True:
            query = "limit=100" + (f"&cursor={cursor}" if cursor else "")
            response = await api.client.get(f"/api/v1/posts?{query}")
            sizes.append(len(response.content))
            page = response.json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        await api.settle()
        stored = [
            await api_redis.strlen(key)
            for key in await keys_under(api_redis, key_prefix)
            if b":list:" in key and not key.endswith(b":gen")
        ]
        big = await api.create(body=ESCAPED * 20_000)  # 120 kB of JSON: alone over the limit
        await api.settle()
        alone = (await api.client.get("/api/v1/posts?limit=100")).json()
        await api.settle()
        stored_after = [
            await api_redis.strlen(key)
            for key in await keys_under(api_redis, key_prefix)
            if b":list:" in key and not key.endswith(b":gen")
        ]
    assert seen == list(range(8, 0, -1))  # every post once, newest first, over several pages
    assert len(sizes) > 1
    assert max(sizes) <= limit
    assert stored
    assert max(stored) <= limit + len(b"200 -\n")  # the entry's frame
    assert [item["id"] for item in alone["items"]] == [big["id"]]  # still shown, alone
    assert alone["next_cursor"] is not None
    assert max(stored_after, default=0) <= limit + len(b"200 -\n")  # and never cached


async def test_versions_are_paged_and_leave_their_bodies_out(api: Api) -> None:
    """The issue's post: 100 versions of a 200 kB body of \\x01 made a 120 MB answer. Here
    100 versions of 20 kB (120 kB of JSON each, 12 MB in all before): each page is small."""
    post = await api.create(body=ESCAPED * 20_000)
    url = f"/api/v1/posts/{post['id']}"
    for n in range(2, 101):
        document = {"title": f"V{n}", "body": ESCAPED * 20_000, "author": "ada"}
        assert (await api.client.put(url, json=document, headers=AUTH)).status_code == 200
    versions, cursor, sizes = [], None, []
    while True:
        query = "limit=100" + (f"&cursor={cursor}" if cursor else "")
        response = await api.client.get(f"{url}/versions?{query}")
        assert response.status_code == 200, response.text
        sizes.append(len(response.content))
        page = response.json()
        assert all("body" not in item for item in page["items"])
        versions += [item["version"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert versions == list(range(1, 101))
    assert max(sizes) < 32 * 1024  # the whole history's list, no body in it
    default = (await api.client.get(f"{url}/versions")).json()
    assert len(default["items"]) == 20
    assert default["next_cursor"] is not None
    one = await api.client.get(f"{url}/versions/57")
    assert one.json()["body"] == ESCAPED * 20_000
    assert one.json()["title"] == "V57"


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=" + "A" * CURSOR_CHARS,
        "cursor=" + "A" * 65,
        "page=2",
    ],
    ids=["limit-0", "limit-101", "limit-text", "forged-cursor", "long-cursor", "unknown"],
)
async def test_bad_version_page_parameters_are_422(api: Api, query: str) -> None:
    post = await api.create()
    response = await api.client.get(f"/api/v1/posts/{post['id']}/versions?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == query.partition("=")[0]


async def test_a_cursor_of_one_post_versions_is_refused_for_another(api: Api) -> None:
    first, second = await api.create(), await api.create()
    for post in (first, second):
        url = f"/api/v1/posts/{post['id']}"
        await api.client.put(url, json={"title": "2", "body": "b", "author": "a"}, headers=AUTH)
    page = (await api.client.get(f"/api/v1/posts/{first['id']}/versions?limit=1")).json()
    cursor = page["next_cursor"]
    other = await api.client.get(f"/api/v1/posts/{second['id']}/versions?cursor={cursor}")
    assert other.status_code == 422
    listed = await api.client.get(f"/api/v1/posts?cursor={cursor}")  # nor for the list
    assert listed.status_code == 422
    assert json.loads(listed.text)["error"]["field"] == "cursor"
