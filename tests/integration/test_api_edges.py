"""Edges of the posts API: huge and odd ids, out-of-range list parameters, corrupt cache entries,
refused writes, version routes, writes with the database down, and invalidation through the cache.

Real PostgreSQL and real Redis, as in test_posts_api.py.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from sqlalchemy import make_url

from postal.posts.models import NUL_REFUSAL
from postal_testing.proxy import FaultProxy
from tests.integration.api_support import AUTH, Api, running_api

VALID = {"title": "New", "body": "New body", "author": "ada"}
HUGE_ID = "9" * 5000  # int() of this many digits raises ValueError in Python >= 3.11
PADDED_ID = "0" * 23 + "1"  # 24 characters

Request = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error


# -- 1. ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_overlong_ids_are_422_invalid_id_never_500(api: Api, method: str) -> None:
    raw = HUGE_ID
    body = VALID if method == "PUT" else None
    response = await api.client.request(method, f"/api/v1/posts/{raw}", json=body, headers=AUTH)
    error = assert_error(response, 422, "invalid_id", "post_id")
    assert response.json() == {
        "error": {"code": "invalid_id", "message": error["message"], "field": "post_id"}
    }


async def test_leading_zeros_name_the_same_post(api: Api) -> None:
    created = await api.create(title="First")
    assert created["id"] == 1  # a clean database starts ids at 1
    plain = await api.client.get("/api/v1/posts/1")
    for raw in ("0001", PADDED_ID):  # as FastAPI's int parameters read them on the write routes
        padded = await api.client.get(f"/api/v1/posts/{raw}")
        assert plain.status_code == padded.status_code == 200, padded.text
        assert padded.json() == plain.json() == created
        assert padded.headers["etag"] == plain.headers["etag"] == '"v1"'


# -- 2. list parameters ---------------------------------------------------------------------------


async def test_a_5000_digit_limit_is_422(api: Api) -> None:
    response = await api.client.get(f"/api/v1/posts?limit={HUGE_ID}")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["field"] == "limit"


@pytest.mark.parametrize("before_id", [1, 10**19, 2**63], ids=["1", "10**19", "2**63"])
async def test_a_cursor_of_the_old_unsigned_form_is_422(api: Api, before_id: int) -> None:
    """`p<id>` in base64 was a cursor until cursors were signed: anyone could make one."""
    await api.create()
    old_form = base64.urlsafe_b64encode(f"p{before_id}".encode()).decode().rstrip("=")
    response = await api.client.get(f"/api/v1/posts?cursor={old_form}")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["field"] == "cursor"


# -- 3. a corrupt cache entry ---------------------------------------------------------------------


async def test_a_corrupt_cache_entry_never_fails_a_read(
    api: Api, api_redis: redis.Redis, key_prefix: str
) -> None:
    raw_redis = api_redis
    post = await api.create(title="Intact")
    url = f"/api/v1/posts/{post['id']}"
    await api.client.get(url)
    await api.settle()
    assert (await api.client.get(url)).status_code == 200  # now cached
    key = f"{key_prefix}post:{{{post['id']}}}"
    cached = await raw_redis.get(key)
    assert cached is not None  # the key is the one the service fills
    assert b'"Intact"' in cached
    garbage = b"0\ngarbage"
    await raw_redis.set(key, garbage)
    await raw_redis.set(f"{key}:gen", "0")  # the stamp matches: it reads as a hit
    first = await api.client.get(url)
    assert first.status_code == 200, first.text
    assert first.json()["title"] == "Intact"
    await api.settle()
    second = await api.client.get(url)
    assert second.status_code == 200, second.text
    assert second.json() == post
    await api.settle()
    assert await raw_redis.get(key) != garbage


# -- 4. refused writes change nothing -------------------------------------------------------------


def _put_empty_title(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.put(url, json={**VALID, "title": ""}, headers=AUTH)


def _put_unknown_field(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.put(url, json={**VALID, "color": "red"}, headers=AUTH)


def _restore_stale(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.post(f"{url}/versions/1/restore", headers={**AUTH, "If-Match": '"v9"'})


def _delete_stale(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.delete(url, headers={**AUTH, "If-Match": '"v7"'})


@pytest.mark.parametrize(
    ("write", "status", "code"),
    [
        (_put_empty_title, 422, "too_short"),
        (_put_unknown_field, 422, "unknown_field"),
        (_restore_stale, 412, "version_conflict"),
        (_delete_stale, 412, "version_conflict"),
    ],
    ids=["put-empty-title", "put-unknown-field", "restore-if-match-v9", "delete-if-match-v7"],
)
async def test_a_refused_write_changes_nothing(
    api: Api, write: Request, status: int, code: str
) -> None:
    post = await api.create(title="Kept")
    url = f"/api/v1/posts/{post['id']}"
    assert_error(await write(api.client, url), status, code)
    after = await api.client.get(url)
    assert after.status_code == 200
    assert after.json() == post
    assert (after.json()["version"], after.json()["title"]) == (1, "Kept")
    versions = await api.client.get(f"{url}/versions")
    assert versions.status_code == 200
    assert len(versions.json()["items"]) == 1


@pytest.mark.parametrize(
    ("field", "value", "blamed"),
    [
        ("title", "Ti\x00tle", "title"),
        ("body", "a body\x00", "body"),
        ("author", "\x00ada", "author"),
        ("tags", ["fine", "t\x00g"], "tags.1"),
    ],
    ids=["title", "body", "author", "tags"],
)
async def test_a_nul_character_is_422_naming_the_field_and_changes_nothing(
    api: Api, field: str, value: object, blamed: str
) -> None:
    # PostgreSQL cannot store U+0000: unchecked, title, body and author failed in the INSERT
    # (a 500), and tags went into the JSON column. Refused as the CSV import refuses it.
    post = await api.create(title="Kept")
    url = f"/api/v1/posts/{post['id']}"
    written = {**VALID, field: value}
    created = await api.client.post("/api/v1/posts", json=written, headers=AUTH)
    replaced = await api.client.put(url, json=written, headers=AUTH)
    for response in (created, replaced):
        error = assert_error(response, 422, "nul_character", blamed)
        assert error["message"] == f"{blamed}: {NUL_REFUSAL}"
        assert "NUL character (U+0000)" in error["message"]
    listed = await api.client.get("/api/v1/posts")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["items"]] == [post["id"]]
    after = await api.client.get(url)
    assert after.status_code == 200
    assert after.json() == post


# -- 5. version routes ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0", "abc"])
async def test_bad_version_numbers_are_422(api: Api, version: str) -> None:
    post = await api.create()
    response = await api.client.get(f"/api/v1/posts/{post['id']}/versions/{version}")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"]
    assert error["message"]


async def test_a_missing_version_is_404_version_not_found(api: Api) -> None:
    post = await api.create()
    response = await api.client.get(f"/api/v1/posts/{post['id']}/versions/99")
    assert_error(response, 404, "version_not_found")


async def test_versions_of_a_missing_post_are_404_post_not_found(api: Api) -> None:
    response = await api.client.get("/api/v1/posts/999999/versions")
    assert_error(response, 404, "post_not_found")


# -- 6. writes with the database down -------------------------------------------------------------


def _put(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.put(url, json=VALID, headers=AUTH)


def _delete(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.delete(url, headers=AUTH)


def _restore(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
    return client.post(f"{url}/versions/1/restore", headers=AUTH)


@pytest.mark.parametrize("write", [_put, _delete, _restore], ids=["put", "delete", "restore"])
async def test_writes_with_the_database_down_are_503_with_retry_after(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str, write: Request
) -> None:
    url = make_url(database_url)
    async with FaultProxy(url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with running_api(proxied, redis_url, key_prefix, DATABASE_TIMEOUT="1s") as api:
            post = await api.create()
            await proxy.refuse()
            try:
                started = time.perf_counter()
                response = await write(api.client, f"/api/v1/posts/{post['id']}")
                elapsed = time.perf_counter() - started
            finally:
                await proxy.pass_through()
            assert elapsed < 5, elapsed
            assert_error(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"


# -- 7. invalidation goes through the cache -------------------------------------------------------


async def _cache_it(api: Api, url: str) -> None:
    """Read `url` so it is filled, then prove the next read is a hit."""
    before = api.state.reads.stats()
    assert (await api.client.get(url)).status_code == 200
    await api.settle()
    filled = api.state.reads.stats()
    assert filled.fills_done >= before.fills_done + 1, filled
    assert (await api.client.get(url)).status_code == 200
    assert api.state.reads.stats().hits >= filled.hits + 1


async def test_an_update_replaces_a_cached_post(api: Api) -> None:
    post = await api.create(title="Old")
    url = f"/api/v1/posts/{post['id']}"
    await _cache_it(api, url)
    assert (await api.client.put(url, json=VALID, headers=AUTH)).status_code == 200
    read = await api.client.get(url)
    assert (read.json()["title"], read.json()["version"]) == ("New", 2)
    assert read.headers["etag"] == '"v2"'


async def test_a_delete_removes_a_cached_post(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    await _cache_it(api, url)
    assert (await api.client.delete(url, headers=AUTH)).status_code == 204
    assert_error(await api.client.get(url), 404, "post_not_found")


async def test_a_restore_replaces_a_cached_post(api: Api) -> None:
    post = await api.create(title="One")
    url = f"/api/v1/posts/{post['id']}"
    second = {"title": "Two", "body": "b", "author": "a"}
    assert (await api.client.put(url, json=second, headers=AUTH)).status_code == 200
    await _cache_it(api, url)
    assert (await api.client.get(url)).json()["title"] == "Two"
    assert (await api.client.post(f"{url}/versions/1/restore", headers=AUTH)).status_code == 200
    read = await api.client.get(url)
    assert (read.json()["title"], read.json()["version"]) == ("One", 3)
    assert read.headers["etag"] == '"v3"'


# -- 8. the not-found shape -----------------------------------------------------------------------


async def test_a_missing_post_is_404_in_the_error_shape_from_database_and_cache(api: Api) -> None:
    fresh = await api.client.get("/api/v1/posts/424242")
    await api.settle()
    cached = await api.client.get("/api/v1/posts/424242")  # the cached "no such post"
    for response in (fresh, cached):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        message = body["error"]["message"]
        assert isinstance(message, str)
        assert message
        assert body == {"error": {"code": "post_not_found", "message": message}}
    assert fresh.content == cached.content


async def test_every_answer_of_the_cached_read_lane_carries_a_request_id(api: Api) -> None:
    """The fast lane does the request-id middleware's work itself: 200, 304 and 404 too."""
    post = await api.create(title="with an id")
    url = f"/api/v1/posts/{post['id']}"
    found = await api.client.get(url)
    same = await api.client.get(url, headers={"If-None-Match": found.headers["etag"]})
    missing = await api.client.get("/api/v1/posts/999999999")
    tagged = await api.client.get(url, headers={"X-Request-ID": "lb-7f3a:42"})
    assert [found.status_code, same.status_code, missing.status_code] == [200, 304, 404]
    ids = [response.headers["x-request-id"] for response in (found, same, missing)]
    assert len(set(ids)) == 3
    assert tagged.headers["x-request-id"] == "lb-7f3a:42"
