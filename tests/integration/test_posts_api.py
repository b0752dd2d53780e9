"""The posts API end to end over ASGI: real PostgreSQL, real Redis, every endpoint and error."""

from __future__ import annotations

import pytest

from tests.integration.api_support import AUTH, Api, running_api


async def test_create_then_read_through_the_cache(api: Api) -> None:
    created = await api.create(title="Hello", body="Wörld", tags=["x", "y"])
    assert created["version"] == 1
    assert created["tags"] == ["x", "y"]
    first = await api.client.get(f"/api/v1/posts/{created['id']}")
    await api.settle()
    second = await api.client.get(f"/api/v1/posts/{created['id']}")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content  # a hit sends the bytes a miss built
    assert second.json() == created
    assert second.headers["etag"] == '"v1"'
    assert second.headers["content-type"] == "application/json"
    assert api.state.reads.stats().hits >= 1


async def test_create_answers_201_with_location_and_etag(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/posts", json={"title": "T", "body": "B", "author": "a"}, headers=AUTH
    )
    assert response.status_code == 201
    post = response.json()
    assert response.headers["location"] == f"/api/v1/posts/{post['id']}"
    assert response.headers["etag"] == '"v1"'
    assert post["tags"] == []
    assert post["created_at"].endswith("Z")


async def test_update_makes_a_new_version_and_the_cache_follows(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    await api.client.get(url)
    await api.settle()  # version 1 is now cached
    response = await api.client.put(
        url, json={"title": "Second", "body": "B2", "author": "ada"}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2
    read = await api.client.get(url)
    assert read.json()["title"] == "Second"
    assert read.headers["etag"] == '"v2"'


async def test_delete_then_read_is_404_through_the_cache(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    await api.client.get(url)
    await api.settle()
    assert (await api.client.delete(url, headers=AUTH)).status_code == 204
    gone = await api.client.get(url)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "post_not_found"
    assert (await api.client.get(f"{url}/versions")).status_code == 404


async def test_restore_makes_an_old_version_current_as_a_new_one(api: Api) -> None:
    post = await api.create(title="One")
    url = f"/api/v1/posts/{post['id']}"
    await api.client.put(url, json={"title": "Two", "body": "b", "author": "a"}, headers=AUTH)
    await api.client.get(url)
    await api.settle()
    restored = await api.client.post(f"{url}/versions/1/restore", headers=AUTH)
    assert restored.status_code == 200
    assert restored.json()["version"] == 3
    assert restored.json()["title"] == "One"
    assert (await api.client.get(url)).json()["title"] == "One"
    versions = (await api.client.get(f"{url}/versions")).json()["items"]
    assert [(v["version"], v["title"]) for v in versions] == [(1, "One"), (2, "Two"), (3, "One")]
    second = await api.client.get(f"{url}/versions/2")
    assert second.json()["title"] == "Two"
    missing = await api.client.get(f"{url}/versions/9")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "version_not_found"


async def test_list_pages_newest_first_and_follow_writes(api: Api) -> None:
    ids = [(await api.create(title=f"P{n}"))["id"] for n in range(5)]
    first = (await api.client.get("/api/v1/posts?limit=2")).json()
    assert [p["id"] for p in first["items"]] == ids[::-1][:2]
    await api.settle()
    # a post created between pages appears on no later page: keyset pagination is stable
    await api.create(title="Late")
    second = (await api.client.get(f"/api/v1/posts?limit=2&cursor={first['next_cursor']}")).json()
    third = (await api.client.get(f"/api/v1/posts?limit=2&cursor={second['next_cursor']}")).json()
    assert [p["id"] for p in second["items"] + third["items"]] == ids[::-1][2:]
    assert third["next_cursor"] is None
    # the first page, cached before the write, shows the new post now: the write bumped pages
    fresh = (await api.client.get("/api/v1/posts?limit=2")).json()
    assert fresh["items"][0]["title"] == "Late"


async def test_etags_give_304_and_guard_writes(api: Api) -> None:
    post = await api.create()
    url = f"/api/v1/posts/{post['id']}"
    assert (await api.client.get(url, headers={"If-None-Match": '"v1"'})).status_code == 304
    assert (await api.client.get(url, headers={"If-None-Match": 'W/"v1"'})).status_code == 304
    assert (await api.client.get(url, headers={"If-None-Match": '"v0"'})).status_code == 200
    new = {"title": "N", "body": "B", "author": "a"}
    ok = await api.client.put(url, json=new, headers={**AUTH, "If-Match": '"v1"'})
    assert ok.status_code == 200
    # a second editor still holding version 1 cannot overwrite version 2
    stale = await api.client.put(url, json=new, headers={**AUTH, "If-Match": '"v1"'})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "version_conflict"
    assert stale.headers["etag"] == '"v2"'
    refused = await api.client.delete(url, headers={**AUTH, "If-Match": '"v1"'})
    assert refused.status_code == 412
    assert (await api.client.get(url)).json()["version"] == 2  # nothing changed
    assert (await api.client.delete(url, headers={**AUTH, "If-Match": '"v2"'})).status_code == 204


@pytest.mark.parametrize(
    ("document", "status", "code", "field"),
    [
        ({"title": "", "body": "b", "author": "a"}, 422, "too_short", "title"),
        ({"title": "   ", "body": "b", "author": "a"}, 422, "too_short", "title"),
        ({"title": "t" * 201, "body": "b", "author": "a"}, 422, "too_long", "title"),
        ({"title": 5, "body": "b", "author": "a"}, 422, "invalid_type", "title"),
        ({"title": "t", "body": "b", "author": "a", "tags": "x"}, 422, "invalid_type", "tags"),
        ({"title": "t", "body": "b"}, 422, "missing_field", "author"),
        ({"title": "t", "body": "b", "author": "a", "color": 1}, 422, "unknown_field", "color"),
        ({"title": "t", "body": "é" * 600_000, "author": "a"}, 413, "too_large", "body"),
    ],
)
async def test_bad_posts_are_refused_and_nothing_is_written(
    api: Api, document: dict[str, object], status: int, code: str, field: str
) -> None:
    response = await api.client.post("/api/v1/posts", json=document, headers=AUTH)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
    assert (await api.client.get("/api/v1/posts")).json()["items"] == []


async def test_malformed_json_and_non_objects(api: Api) -> None:
    broken = await api.client.post(
        "/api/v1/posts", content=b'{"title": ', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "malformed_json"
    listed = await api.client.post("/api/v1/posts", json=["a"], headers=AUTH)
    assert listed.status_code == 422
    assert listed.json()["error"]["code"] == "invalid_type"
    assert (await api.client.get("/api/v1/posts")).json()["items"] == []


async def test_oversized_request_is_413_before_it_is_read(api: Api) -> None:
    huge = b"x" * (7 * 1_000_000)
    response = await api.client.post(
        "/api/v1/posts", content=huge, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "1.5", "99999999999999999999"])
async def test_bad_ids_are_422_everywhere(api: Api, raw: str) -> None:
    for method, url in [
        ("GET", f"/api/v1/posts/{raw}"),
        ("PUT", f"/api/v1/posts/{raw}"),
        ("DELETE", f"/api/v1/posts/{raw}"),
        ("GET", f"/api/v1/posts/{raw}/versions"),
    ]:
        body = {"title": "t", "body": "b", "author": "a"} if method == "PUT" else None
        response = await api.client.request(method, url, json=body, headers=AUTH)
        assert response.status_code == 422, (method, url, response.text)
        assert response.json()["error"] == {
            "code": "invalid_id",
            "message": response.json()["error"]["message"],
            "field": "post_id",
        }


async def test_unknown_ids_are_404_and_cached_briefly(api: Api) -> None:
    for _ in range(3):
        response = await api.client.get("/api/v1/posts/987654")
        assert response.status_code == 404
        await api.settle()
    assert len(api.post_selects) == 1  # the negative entry answered the later two
    document = {"title": "t", "body": "b", "author": "a"}
    put = await api.client.put("/api/v1/posts/987654", json=document, headers=AUTH)
    assert put.status_code == 404


async def test_bad_list_parameters(api: Api) -> None:
    for query, field in [("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                         ("cursor=zzz", "cursor"), ("page=2", "page")]:  # fmt: skip
        response = await api.client.get(f"/api/v1/posts?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["field"] == field


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    missing = await api.client.get("/api/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await api.client.patch("/api/v1/posts", headers=AUTH)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    # A post's path has two routes (the Starlette read, FastAPI's writes): Allow names both.
    options = await api.client.options("/api/v1/posts/1", headers=AUTH)
    assert options.status_code == 405
    assert options.headers["allow"] == "DELETE, GET, HEAD, PUT"


async def test_writes_need_the_token(api: Api) -> None:
    document = {"title": "t", "body": "b", "author": "a"}
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]:
        response = await api.client.post("/api/v1/posts", json=document, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await api.client.get("/api/v1/posts")).json()["items"] == []


async def test_openapi_documents_every_route(
    database_url: str, clean_database: None, cache_url: str, key_prefix: str
) -> None:
    async with running_api(database_url, cache_url, key_prefix, POSTAL_DOCS="on") as api:
        schema = (await api.client.get("/openapi.json")).json()
        docs = await api.client.get("/docs")
    assert "get" in schema["paths"]["/api/v1/posts/{post_id}"]
    assert {"put", "delete"} <= set(schema["paths"]["/api/v1/posts/{post_id}"])
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/posts"])
    assert "/api/v1/posts/{post_id}/versions/{version}/restore" in schema["paths"]
    versions = schema["paths"]["/api/v1/posts/{post_id}/versions"]["get"]
    assert {"limit", "cursor"} <= {parameter["name"] for parameter in versions["parameters"]}
    assert docs.status_code == 200
    operations = {
        (method, path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert {operation["operationId"] for operation in operations.values()} == OPERATION_IDS
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), operation in operations.items():
        secured = method != "get" or path == "/status"
        assert ("security" in operation) == secured, (method, path)
        for status, answer in operation["responses"].items():
            content = answer.get("content", {}).get("application/json", {})
            if status.startswith(("4", "5")) and path != "/readyz":
                assert content["schema"] == ERROR_BODY or status == "422", (method, path, status)
            if status.startswith("2") and status != "204" and path != "/metrics":
                assert content["schema"]["$ref"].startswith("#/components/schemas/"), (path, status)
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["code", "message"]
    assert set(error["properties"]) == {"code", "message", "field"}


OPERATION_IDS = {
    "create_post", "get_post", "list_posts", "update_post", "delete_post", "list_versions",
    "get_version", "restore_version", "import_posts", "get_health", "get_readiness",
    "get_status", "get_metrics",
}  # fmt: skip
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


async def test_with_a_token_the_openapi_pages_are_off_unless_asked_for(api: Api) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = await api.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


async def test_readyz_reports_database_and_cache(api: Api) -> None:
    ready = (await api.client.get("/readyz")).json()
    assert ready["status"] == "ok"
    assert ready["database"] == {"reachable": True}
    assert ready["cache"]["breaker"] == {"read": "closed", "write": "closed"}
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}


async def test_create_replaces_a_cached_not_found_for_its_id(api: Api) -> None:
    # ids restart at 1 in a clean database: "no post 1" is cached before post 1 exists
    assert (await api.client.get("/api/v1/posts/1")).status_code == 404
    await api.settle()
    created = await api.create(title="Now here")
    assert created["id"] == 1
    found = await api.client.get("/api/v1/posts/1")
    assert found.status_code == 200
    assert found.json()["title"] == "Now here"
