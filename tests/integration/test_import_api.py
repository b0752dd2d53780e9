"""`POST /api/v1/posts/import` end to end: real PostgreSQL, real Redis, the app over ASGI (and over
a real uvicorn socket for the dropped connection).

What matters to a client: every imported row is then served, through the cache, with its content;
a bad file is a 422 whose report says where, and writes nothing; the write guard's token comes
before the body and its own size limit applies; a client that goes away mid-upload, or a Redis that
does not take the invalidation, never leaves the database half-imported or the readers stale.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from postal.embedded import free_loopback_port
from postal.imports.importer import ImportConflict, ImportReport
from postal_testing.proxy import FaultProxy
from tests.integration.api_support import AUTH, Api, running_api
from tests.integration.helpers import eventually
from tests.support.database import row_counts, tag_rows_in_step

IMPORT = "/api/v1/posts/import"
CSV_HEADERS = {**AUTH, "Content-Type": "text/csv"}
COLUMNS = ("id", "title", "body", "author", "tags", "created_at")


def csv_bytes(rows: Iterable[Mapping[str, object]], columns: Iterable[str] = COLUMNS) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def new_rows(count: int, prefix: str = "post") -> list[dict[str, object]]:
    return [
        {"title": f"{prefix} {i}", "body": f"body of {prefix} {i}", "author": "ada",
         "tags": "x|y"}
        for i in range(count)
    ]  # fmt: skip


async def import_csv(api: Api, body: Any, **params: str) -> httpx.Response:
    return await api.client.post(IMPORT, content=body, headers=CSV_HEADERS, params=params)


async def writing_into_posts(api: Api) -> bool:
    """Whether another session holds a write lock on posts: an import's open transaction."""
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE c.relname = 'posts' AND l.mode = 'RowExclusiveLock'"
        " AND l.pid <> pg_backend_pid()"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    async with api.state.engine.connect() as connection:
        return bool((await connection.execute(query)).scalar_one())


class Chunks:
    """A request body sent as chunks (no Content-Length); records whether it was read."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        for chunk in self.chunks:
            yield chunk


# -- the happy path ------------------------------------------------------------------------------


async def test_every_imported_row_is_served_through_the_cache(api: Api) -> None:
    old = [await api.create(title=f"old {i}", body="old body") for i in range(2)]
    for post in old:  # cached in their version 1
        await api.client.get(f"/api/v1/posts/{post['id']}")
    await api.settle()
    rows: list[dict[str, object]] = [
        {"title": "Quoted, with commas", "body": 'two\nlines and "quotes"', "author": "bob",
         "tags": "a|b", "created_at": "2024-05-01T12:00:00Z"},
        *new_rows(20),
        *({"id": post["id"], "title": f"new {post['id']}", "body": "imported body",
           "author": "cy"} for post in old),
    ]  # fmt: skip
    response = await import_csv(api, csv_bytes(rows))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["committed"] is True
    assert (report["created"], report["updated"], report["invalid"]) == (21, 2, 0)
    assert report["errors"] == []
    assert report["cache"]["keys"] == 23
    assert report["cache"]["pending"] is False
    assert await row_counts(api.state.engine) == (23, 25)  # 2 + 21 posts; each has its versions

    listed = (await api.client.get("/api/v1/posts?limit=100")).json()["items"]
    by_title = {post["title"]: post for post in listed}
    quoted = by_title["Quoted, with commas"]
    assert quoted["body"] == 'two\nlines and "quotes"'
    assert quoted["tags"] == ["a", "b"]
    assert datetime.fromisoformat(quoted["created_at"]) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert by_title["post 7"]["body"] == "body of post 7"
    assert by_title["post 7"]["tags"] == ["x", "y"]
    for post in listed:
        url = f"/api/v1/posts/{post['id']}"
        first = await api.client.get(url)
        await api.settle()
        selects = len(api.post_selects)
        second = await api.client.get(url)
        assert len(api.post_selects) == selects  # the second read was a cache hit
        assert first.json() == second.json() == post
    for post in old:  # the cached version 1 is gone: version 2, the imported content
        read = (await api.client.get(f"/api/v1/posts/{post['id']}")).json()
        assert (read["version"], read["title"], read["body"]) == (
            2, f"new {post['id']}", "imported body",
        )  # fmt: skip
        assert read["created_at"] == post["created_at"]


async def test_warm_fills_the_cache_so_the_first_read_is_a_hit(api: Api) -> None:
    response = await import_csv(api, csv_bytes(new_rows(5)), warm="true")
    assert response.status_code == 200, response.text
    assert response.json()["cache"]["warmed"] == 5
    listed = (await api.client.get("/api/v1/posts")).json()["items"]
    selects = len(api.post_selects)
    for post in listed:
        assert (await api.client.get(f"/api/v1/posts/{post['id']}")).json() == post
    assert len(api.post_selects) == selects


# -- bad input -----------------------------------------------------------------------------------

BAD_FILE = (
    b"title,body,author,id,created_at\r\n"
    b"Good,fine,ada,,\r\n"  # line 2
    b',"a body\r\nover two lines",ada,,\r\n'  # lines 3-4: no title
    b"Dated,b,ada,,yesterday\r\n"  # line 5
    b"Ghost,b,ada,999999,\r\n"  # line 6: no such post
    b"Short,row\r\n"  # line 7
    b"Long,bbbbbbbbbb,ada,,\r\n"  # line 8: fine
    + b"T" * 201
    + b",b,ada,,\r\n"  # line 9: title too long
)
BAD_ROWS = [
    (3, "title", "missing_field"),
    (5, "created_at", "bad_date"),
    (6, "id", "unknown_id"),
    (7, None, "wrong_column_count"),
    (9, "title", "too_long"),
]


def where(report: Mapping[str, Any]) -> list[tuple[int, str | None, str]]:
    return [(error["line"], error["column"], error["reason"]) for error in report["errors"]]


async def test_bad_rows_are_a_422_with_their_lines_and_nothing_is_written(api: Api) -> None:
    response = await import_csv(api, BAD_FILE)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"]["code"] == "invalid_rows"
    assert "nothing was imported" in answer["error"]["message"]
    report = answer["report"]
    assert report["committed"] is False
    assert report["invalid"] == len(BAD_ROWS)
    assert where(report) == BAD_ROWS
    assert all(error["message"] for error in report["errors"])
    assert report["cache"] is None
    assert await row_counts(api.state.engine) == (0, 0)


async def test_skip_invalid_writes_the_good_rows_and_reports_the_bad(api: Api) -> None:
    response = await import_csv(api, BAD_FILE, skip_invalid="true")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["committed"] is True
    assert (report["created"], report["invalid"]) == (2, len(BAD_ROWS))
    assert where(report) == BAD_ROWS
    titles = {post["title"] for post in (await api.client.get("/api/v1/posts")).json()["items"]}
    assert titles == {"Good", "Long"}


async def test_a_bad_header_is_a_422_naming_the_column(api: Api) -> None:
    response = await import_csv(api, b"title,body,writer\nT,b,a\n")
    assert response.status_code == 422
    answer = response.json()
    assert "author" in answer["error"]["message"]
    reasons = [error["reason"] for error in answer["report"]["errors"]]
    assert reasons == ["unknown_column", "missing_column"]
    ignored = await import_csv(api, b"title,body,author,mood\nT,b,a,glad\n",
                               ignore_unknown_columns="true")  # fmt: skip
    assert ignored.status_code == 200, ignored.text
    assert ignored.json()["created"] == 1


async def test_only_text_csv_in_utf8_is_accepted(api: Api) -> None:
    body = csv_bytes(new_rows(1))
    for content_type in ["application/json", "text/plain", "text/csv; charset=latin-1", ""]:
        headers = {**AUTH, "Content-Type": content_type}
        response = await api.client.post(IMPORT, content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert response.json()["error"]["code"] == "unsupported_media_type"
    utf8 = {**AUTH, "Content-Type": "text/csv; charset=UTF-8"}
    assert (await api.client.post(IMPORT, content=body, headers=utf8)).status_code == 200
    assert await row_counts(api.state.engine) == (1, 1)


async def test_bad_query_parameters_are_422(api: Api) -> None:
    response = await import_csv(api, csv_bytes(new_rows(1)), skip_invalid="maybe")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "skip_invalid"


# -- the guard: token first, then the import's own size limit -------------------------------------


async def test_the_token_is_checked_before_the_body_is_read(api: Api) -> None:
    for headers in [{"Content-Type": "text/csv"},
                    {"Content-Type": "text/csv", "Authorization": "Bearer wrong"}]:  # fmt: skip
        body = Chunks(csv_bytes(new_rows(3)))
        response = await api.client.post(IMPORT, content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert not body.read
    assert await row_counts(api.state.engine) == (0, 0)


async def test_the_import_has_its_own_size_limit(
    database_url: str, clean_database: None, cache_url: str, key_prefix: str
) -> None:
    async with running_api(
        database_url,
        cache_url,
        key_prefix,
        POSTAL_MAX_IMPORT_BYTES="150000",
        POSTAL_MAX_BODY_BYTES="1000",
    ) as api:
        # ~100 kB: over an ordinary write's limit (6 x 1000 + 64 KiB), within the import's
        fits = csv_bytes(new_rows(2500))
        assert 6 * 1000 + 64 * 1024 < len(fits) < 150_000
        response = await import_csv(api, fits)
        assert response.status_code == 200, response.text
        assert await row_counts(api.state.engine) == (2500, 2500)

        declared = Chunks(csv_bytes(new_rows(5000)))  # sent with Content-Length below
        headers = {**CSV_HEADERS, "Content-Length": "150001"}
        refused = await api.client.post(IMPORT, content=declared, headers=headers)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "too_large"
        assert not declared.read

        over = csv_bytes(new_rows(5000, prefix="over"))  # ~200 kB, chunked: no length declared
        chunked = Chunks(*(over[i : i + 16384] for i in range(0, len(over), 16384)))
        streamed = await import_csv(api, chunked)
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "too_large"
        # the part read before the limit: rolled back
        assert await row_counts(api.state.engine) == (2500, 2500)


# -- a client that goes away mid-upload ----------------------------------------------------------


@asynccontextmanager
async def serving_over_http(api: Api) -> AsyncIterator[int]:
    """The app (its lifespan already run by `running_api`) on a real uvicorn socket: the port."""
    port = free_loopback_port()
    config = uvicorn.Config(
        api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=10)
        yield port
    finally:
        server.should_exit = True
        await task


async def test_a_client_gone_mid_upload_leaves_the_database_unchanged(api: Api) -> None:
    existing = await api.create(title="kept")
    body = csv_bytes([*new_rows(5000), {"id": existing["id"], "title": "changed", "body": "b",
                                        "author": "a"}])  # fmt: skip
    sent = body[: len(body) // 2]  # several batches' worth, then nothing more
    async with serving_over_http(api) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST {IMPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH['Authorization']}"
            f"\r\nContent-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + sent)
        await writer.drain()
        async with asyncio.timeout(20):  # the import has written rows inside its transaction
            while not await writing_into_posts(api):  # noqa: ASYNC110 - the database's state
                await asyncio.sleep(0.02)
        writer.transport.abort()  # the client goes away: a reset, no more bytes
        async with asyncio.timeout(20):  # the import notices, and rolls back
            while await writing_into_posts(api):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    assert await row_counts(api.state.engine) == (1, 1)
    read = (await api.client.get(f"/api/v1/posts/{existing['id']}")).json()
    assert (read["title"], read["version"]) == ("kept", 1)
    again = await import_csv(api, csv_bytes(new_rows(3)))  # the pool is none the worse
    assert again.status_code == 200
    assert await row_counts(api.state.engine) == (4, 4)


# -- readers, and a Redis that is away ------------------------------------------------------------


@pytest.fixture
async def patient_api(
    database_url: str, clean_database: None, cache_url: str, key_prefix: str
) -> AsyncIterator[Api]:
    """The app with cache deadlines no stall of a loaded machine reaches: a read or a fill that
    timed out would send a read to the database, and the test below checks the cache was hit."""
    deadlines = {"REDIS_GET_DEADLINE": "30s", "REDIS_SET_DEADLINE": "30s"}
    async with running_api(database_url, cache_url, key_prefix, **deadlines) as api:
        yield api


async def test_readers_never_see_older_content_once_the_import_has_answered(
    patient_api: Api,
) -> None:
    """Readers loop over 30 posts while an import makes each its version 2. Each read records
    whether the import had answered when the read was sent; from then on, only version 2.

    Nothing here depends on timing: the cache holds version 1 of every post before the import
    (checked, under deadlines no stall reaches), every reader reads for two whole rounds
    after the answer whatever the machine's speed, and the reads before the answer are counted,
    not required to fit in some time."""
    api = patient_api
    posts = [await api.create(title=f"v1 {i}", body="version one") for i in range(30)]
    ids = [post["id"] for post in posts]
    for post_id in ids:
        await api.client.get(f"/api/v1/posts/{post_id}")
    await api.settle()  # the fills are in: every post is cached in its version 1
    selects = len(api.post_selects)
    for post in posts:
        read = await api.client.get(f"/api/v1/posts/{post['id']}")
        assert read.json()["title"] == post["title"]
    assert len(api.post_selects) == selects  # all hits
    answered = False
    seen_after: list[tuple[int, str]] = []
    seen_before: list[str] = []

    async def reader() -> None:
        rounds_after = 0  # whole rounds over the posts begun after the import answered
        while rounds_after < 2:
            round_after = answered
            for post_id in ids:
                after = answered  # decided before the read is sent
                read = await api.client.get(f"/api/v1/posts/{post_id}")
                assert read.status_code == 200
                title = read.json()["title"]
                (seen_after.append((post_id, title)) if after else seen_before.append(title))
                # A hit from memory is answered without the loop turning, so a reader that never
                # yields keeps the import waiting: turns of 10 s were seen, long enough for the
                # database driver's statement timeout to fire. Clients on their own connections
                # each wait for their socket between requests; yield as they would.
                await asyncio.sleep(0)
            if round_after:
                rounds_after += 1

    updates = [{"id": post_id, "title": f"v2 {post_id}", "body": "version two", "author": "im"}
               for post_id in ids]  # fmt: skip
    body = csv_bytes([*new_rows(3000), *updates])  # the new rows make the import take a while
    readers = [asyncio.create_task(reader()) for _ in range(4)]  # they start with the import
    response = await import_csv(api, body)
    answered = True
    await asyncio.gather(*readers)
    assert response.status_code == 200, response.text
    assert response.json()["updated"] == 30
    assert seen_before, "the readers read nothing before the import answered"
    stale = [(post_id, title) for post_id, title in seen_after if title != f"v2 {post_id}"]
    assert len(seen_after) >= 4 * 2 * len(ids)
    assert stale == []


async def test_a_redis_that_refuses_leaves_the_invalidation_pending_and_retried(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with (
        FaultProxy(upstream) as proxy,
        running_api(database_url, proxy.url, key_prefix) as api,
    ):
        post = await api.create(title="before")
        url = f"/api/v1/posts/{post['id']}"
        await api.client.get(url)
        await api.settle()  # cached: "before"
        await proxy.refuse()
        update = [{"id": post["id"], "title": "after", "body": "b", "author": "a"}]
        response = await import_csv(api, csv_bytes(update))
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["committed"] is True
        assert report["cache"]["pending"] is True
        assert (await api.client.get(url)).json()["title"] == "after"  # bypassed: from the DB
        await proxy.pass_through()
        invalidator = api.state.invalidator
        await eventually(lambda: invalidator.stats().pending_keys == 0, timeout=15)
        await api.client.get(url)
        await api.settle()
        assert (await api.client.get(url)).json()["title"] == "after"  # from the cache, now


async def test_an_import_the_database_failed_in_a_deadlock_is_a_409(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadlock itself is forced in test_imports.py; here, what the client is told."""
    message = "another import was updating some of the same posts; nothing was imported"

    async def deadlocked(*args: object, **kwargs: object) -> ImportReport:
        raise ImportConflict(message)

    monkeypatch.setattr(api.state.importer, "run", deadlocked)
    response = await import_csv(api, csv_bytes(new_rows(1)))
    assert response.status_code == 409
    assert response.json() == {"error": {"code": "import_conflict", "message": message}}


async def test_openapi_documents_the_import(
    database_url: str, clean_database: None, cache_url: str, key_prefix: str
) -> None:
    async with running_api(database_url, cache_url, key_prefix, POSTAL_DOCS="on") as api:
        schema = (await api.client.get("/openapi.json")).json()
    operation = schema["paths"][IMPORT]["post"]
    assert "text/csv" in operation["requestBody"]["content"]
    parameters = {parameter["name"] for parameter in operation["parameters"]}
    assert parameters == {"skip_invalid", "ignore_unknown_columns", "warm"}
    assert {"200", "401", "409", "413", "415", "422", "503"} <= set(operation["responses"])


async def test_an_import_moves_posts_between_the_filtered_pages_it_had_cached(api: Api) -> None:
    """Pages of every filter, cached, then an import that creates posts under them and updates
    one out of them: every filtered page shows the imported content (post_tags kept in step by
    the import's writes, the pages' generation bumped by its cache step)."""
    old = await api.create(title="old", author="ada", tags=["x"])
    queries = ["author=ada", "author=bob", "tag=x", "tag=y", "author=ada&tag=x"]
    for query in queries:
        await api.client.get(f"/api/v1/posts?{query}")
    await api.settle()
    rows: list[dict[str, object]] = [
        *new_rows(3),  # ada, x|y
        {"id": old["id"], "title": "moved", "body": "b", "author": "bob", "tags": "y"},
    ]
    response = await import_csv(api, csv_bytes(rows))
    assert response.status_code == 200, response.text
    new_ids = sorted(
        (p["id"] for p in (await api.client.get("/api/v1/posts")).json()["items"]),
        reverse=True,
    )[:3]

    async def ids(query: str) -> list[int]:
        return [p["id"] for p in (await api.client.get(f"/api/v1/posts?{query}")).json()["items"]]

    assert await ids("author=ada") == new_ids
    assert await ids("author=bob") == [old["id"]]
    assert await ids("tag=x") == new_ids
    assert await ids("tag=y") == [*new_ids, old["id"]]
    assert await ids("author=ada&tag=x") == new_ids
    await tag_rows_in_step(api.state.engine)
