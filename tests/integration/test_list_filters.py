"""`GET /api/v1/posts?author=&tag=` and conditional lists, end to end: real PostgreSQL (and
SQLite), real Redis (and a cluster, through `api`), the pages read through the cache.

What is checked: each filter pages newest first by its signed cursor; a cursor of one filter is
refused by another; a write to a post makes every filtered page that showed it (and the page it
now belongs on) a miss; made-up filter values leave Redis's key count where it was; bad values
are clear 422s that read and cache nothing; list pages carry an ETag and answer 304.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tests.integration.api_support import AUTH, Api, running_api

FILTERS: list[dict[str, str]] = [
    {"author": "ada"},
    {"author": "bob"},
    {"tag": "x"},
    {"tag": "y"},
    {"author": "ada", "tag": "y"},
    {"author": "bob", "tag": "x"},
]


async def keys_under(client: redis.Redis | RedisCluster, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]


def shows(post: dict[str, Any], matching: dict[str, str]) -> bool:
    return matching.get("author", post["author"]) == post["author"] and (
        "tag" not in matching or matching["tag"] in post["tags"]
    )


async def walk(api: Api, matching: dict[str, str], limit: int) -> list[int]:
    """Every page of the filter, following next_cursor: the ids in the order given."""
    ids: list[int] = []
    cursor = None
    while True:
        query = {**matching, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response = await api.client.get(f"/api/v1/posts?{urlencode(query)}")
        assert response.status_code == 200, response.text
        page = response.json()
        assert all(shows(post, matching) for post in page["items"]), (matching, page)
        ids += [post["id"] for post in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def seed(api: Api) -> list[dict[str, Any]]:
    tag_sets = [["x"], ["y", "x"], ["y"], []]
    return [
        await api.create(title=f"P{n}", author=["ada", "bob"][n % 2], tags=tag_sets[n % 4])
        for n in range(10)
    ]


async def check_filters_follow_writes(api: Api) -> None:
    """Every filter, walked twice (the second time from the cache), then after each kind of
    write walked again: the pages show what the database says, never what was cached."""
    posts = {post["id"]: post for post in await seed(api)}

    async def check() -> None:
        for matching in FILTERS:
            expected = sorted((i for i, p in posts.items() if shows(p, matching)), reverse=True)
            for limit in (2, 100):
                assert await walk(api, matching, limit) == expected, (matching, limit)
                await api.settle()
                hits = api.state.reads.stats().hits
                assert await walk(api, matching, limit) == expected, (matching, limit)
                assert api.state.reads.stats().hits > hits  # the second walk was cached

    await check()
    first, second, third = sorted(posts)[-3:]
    # the author moves, and a tag goes: pages of both authors and of the tag change
    new = {"title": "moved", "body": "b", "author": "bob", "tags": ["y"]}
    response = await api.client.put(f"/api/v1/posts/{first}", json=new, headers=AUTH)
    posts[first] = response.json()
    await check()
    restored = await api.client.post(f"/api/v1/posts/{first}/versions/1/restore", headers=AUTH)
    posts[first] = restored.json()
    await check()
    assert (await api.client.delete(f"/api/v1/posts/{second}", headers=AUTH)).status_code == 204
    del posts[second]
    await check()
    created = await api.create(title="new", author="ada", tags=["x", "y"])
    posts[created["id"]] = created
    await check()
    assert third in posts


async def test_every_filter_through_the_cache_follows_every_write(api: Api) -> None:
    await check_filters_follow_writes(api)


async def test_every_filter_through_the_cache_on_sqlite(
    sqlite_url: str, redis_url: str, key_prefix: str
) -> None:
    async with running_api(sqlite_url, redis_url, key_prefix) as api:
        await check_filters_follow_writes(api)


async def test_a_cursor_is_good_for_its_own_filter_only(api: Api) -> None:
    await seed(api)
    page = (await api.client.get("/api/v1/posts?author=ada&limit=2")).json()
    cursor = page["next_cursor"]
    assert (await api.client.get(f"/api/v1/posts?author=ada&cursor={cursor}")).status_code == 200
    # stripped as a write strips it: the same filter, the same cursor
    assert (await api.client.get(f"/api/v1/posts?author=%20ada&cursor={cursor}")).status_code == 200
    for other in ["", "author=bob&", "author=Ada&", "tag=x&", "author=ada&tag=x&"]:
        response = await api.client.get(f"/api/v1/posts?{other}cursor={cursor}")
        assert response.status_code == 422, (other, response.text)
        assert response.json()["error"]["field"] == "cursor"
    unfiltered = (await api.client.get("/api/v1/posts?limit=2")).json()["next_cursor"]
    refused = await api.client.get(f"/api/v1/posts?author=ada&cursor={unfiltered}")
    assert refused.status_code == 422


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("author=", "author", "author must not be empty"),
        ("tag=%20%20", "tag", "tag must not be empty"),
        ("author=" + "a" * 101, "author", "author is 101 characters; the limit is 100"),
        ("tag=" + "t" * 51, "tag", "tag is 51 characters; the limit is 50"),
        ("tag=" + "t" * 5000, "tag", "tag is over 50 characters"),
        ("author=a%00b", "author", "author contains a NUL character"),
        ("tag=a&tag=b", "tag", "tag may be given once"),
        ("author=a&author=a", "author", "author may be given once"),
        ("auther=ada", "auther", "unknown query parameter: auther"),
    ],
)
async def test_bad_filter_values_are_clear_422s_that_read_and_cache_nothing(
    api: Api,
    api_redis: redis.Redis | RedisCluster,
    key_prefix: str,
    query: str,
    field: str,
    message: str,
) -> None:
    await api.create()
    await api.settle()
    keys_before, selects_before = await keys_under(api_redis, key_prefix), len(api.post_selects)
    response = await api.client.get(f"/api/v1/posts?{query}")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"].startswith(message)
    await api.settle()
    assert await keys_under(api_redis, key_prefix) == keys_before
    assert len(api.post_selects) == selects_before


async def test_made_up_filter_values_mint_no_cache_keys(
    api: Api, api_redis: redis.Redis | RedisCluster, key_prefix: str
) -> None:
    """Filter values are the client's to choose: 600 that no post has (authors, tags, pairs)
    are answered (empty) from the database, and leave Redis's keys as they were. The filters
    of real authors and tags are cached: one key per page asked for."""
    await api.create(author="ada", tags=["x"])
    await api.client.get("/api/v1/posts")  # the list's generation exists from here on
    await api.settle()
    keys_before = await keys_under(api_redis, key_prefix)
    for n in range(200):
        for query in (f"author=nobody{n}", f"tag=none{n}", f"author=ada&tag=none{n}"):
            response = await api.client.get(f"/api/v1/posts?{query}")
            assert response.json() == {"items": [], "next_cursor": None}
    await api.settle()
    assert await keys_under(api_redis, key_prefix) == keys_before
    for query in ("author=ada", "tag=x", "author=ada&tag=x"):
        assert len((await api.client.get(f"/api/v1/posts?{query}")).json()["items"]) == 1
    await api.settle()
    added = set(await keys_under(api_redis, key_prefix)) - set(keys_before)
    assert len(added) == 3, added
    assert all(len(key) < len(key_prefix) + 80 for key in added)  # a digest, not the values


# -- conditional lists -----------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?limit=2", "?author=ada", "?tag=x", "?author=ada&tag=x"])
async def test_list_pages_carry_an_etag_and_answer_304_until_a_write(api: Api, query: str) -> None:
    post = await api.create(author="ada", tags=["x"])
    url = f"/api/v1/posts{query}"
    first = await api.client.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('"p')
    assert first.headers["cache-control"] == "no-cache"
    await api.settle()
    cached = await api.client.get(url)  # a hit: the same bytes, the same tag
    assert (cached.content, cached.headers["etag"]) == (first.content, etag)
    for if_none_match in (etag, f"W/{etag}", f'"v1", {etag}', "*"):
        not_modified = await api.client.get(url, headers={"If-None-Match": if_none_match})
        assert not_modified.status_code == 304, if_none_match
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert not_modified.headers["cache-control"] == "no-cache"
    assert (await api.client.get(url, headers={"If-None-Match": '"p0"'})).status_code == 200
    change = {"title": "changed", "body": "b", "author": "ada", "tags": ["x"]}
    await api.client.put(f"/api/v1/posts/{post['id']}", json=change, headers=AUTH)
    changed = await api.client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200  # the write changed the page: a new tag, the new body
    assert changed.headers["etag"] != etag
    assert changed.json()["items"][0]["title"] == "changed"


async def test_every_read_says_no_cache(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    for path in (url, f"{url}/versions", f"{url}/versions/1", "/api/v1/posts"):
        response = await api.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache", path
    not_modified = await api.client.get(url, headers={"If-None-Match": '"v1"'})
    assert not_modified.headers["cache-control"] == "no-cache"
