"""The access log (`POSTAL_ACCESS_LOG`): one JSON line per request with its request id, from the
fast lane and from the app alike; nothing at all when it is off."""

from __future__ import annotations

import json

import pytest

from postal.api.access_log import ACCESS_LOGGER
from postal.observability.logging import JsonFormatter
from tests.integration.api_support import AUTH, running_api


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The access log's lines, as the JSON formatter writes them."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert all("\n" not in line for line in lines)  # one line each
    return [json.loads(line) for line in lines]


async def test_one_line_per_request_with_its_request_id(
    clean_database: str, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"POSTAL_ACCESS_LOG": "true", "POSTAL_LOG_LEVEL": "WARNING"}
    async with running_api(clean_database, redis_url, key_prefix, **env) as api:
        post = await api.create(title="logged")
        path = f"/api/v1/posts/{post['id']}"
        await api.client.get(path)  # a miss
        await api.settle()
        caplog.clear()
        responses = [
            await api.client.get(path),  # the fast lane: a hit
            await api.client.get(path, headers={"X-Request-ID": "client-chosen-1"}),
            await api.client.get("/api/v1/posts?limit=2"),  # the app's route
            await api.client.get("/api/v1/posts/999999"),  # 404, on the fast lane
            await api.client.post("/api/v1/posts", json={"title": ""}, headers=AUTH),  # 422
            await api.client.get("/healthz"),
        ]
    lines = access_records(caplog)
    assert len(lines) == len(responses)
    for line, response in zip(lines, responses, strict=True):
        assert line["logger"] == ACCESS_LOGGER
        assert line["level"] == "INFO"  # written although POSTAL_LOG_LEVEL is WARNING
        assert line["message"] == "request"
        assert line["request_id"] == response.headers["x-request-id"]
        assert line["status"] == response.status_code
        assert line["method"] == response.request.method
        assert line["path"] == response.request.url.path
        assert line["bytes"] == len(response.content)
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
    assert lines[1]["request_id"] == "client-chosen-1"
    assert lines[2]["query"] == "limit=2"
    assert "query" not in lines[0]
    assert [line["status"] for line in lines] == [200, 200, 200, 404, 422, 200]


async def test_off_by_default_nothing_is_logged(
    clean_database: str, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_api(clean_database, redis_url, key_prefix) as api:
        post = await api.create()
        for _ in range(3):
            assert (await api.client.get(f"/api/v1/posts/{post['id']}")).status_code == 200
        assert api.app.access_log is None  # no layer, and the fast lane skips it
    assert access_records(caplog) == []


async def test_the_client_s_path_is_cut_and_cannot_break_the_line(
    clean_database: str, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_api(clean_database, redis_url, key_prefix, POSTAL_ACCESS_LOG="true") as api:
        response = await api.client.get("/nowhere%0A%22injected%22/" + "x" * 5000)
    (line,) = access_records(caplog)
    assert line["status"] == response.status_code == 404
    assert len(str(line["path"])) == 512
    assert str(line["path"]).startswith('/nowhere\n"injected"/')  # escaped in the JSON line
