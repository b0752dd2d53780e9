"""Who may ask what, decided by `create_app` whatever server runs it (issue 17).

Without a token (loopback-only mode) the app answers loopback clients with a loopback Host and
no one else: a client on another machine (the ASGI scope's client address, set here as a
server sets it from the socket) and a web page whose name was re-pointed at 127.0.0.1 (DNS
rebinding: the browser sends the page's own name as the Host) both get a 403 and change
nothing. With a token, `/metrics` and the OpenAPI pages are as their settings say.

Real PostgreSQL and real Redis; the app over ASGI, as a server would call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from postal.app import create_app
from postal.settings import load_settings
from tests.integration.api_support import AUTH, running_api

POST = {"title": "t", "body": "b", "author": "a"}


@asynccontextmanager
async def app_without_token(
    database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[httpx.ASGITransport]:
    environ = {"DATABASE_URL": database_url, "READ_REDIS_URL": redis_url}
    app = create_app(load_settings({**environ, "REDIS_KEY_PREFIX": key_prefix}))
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


def client_of(
    app: httpx.ASGITransport, *, client: tuple[str, int], server: str, host: str
) -> httpx.AsyncClient:
    """A client as a server would present it: `client` and `server` are the connection's two
    addresses (uvicorn takes them from the socket), `host` the Host header the client sent."""
    transport = httpx.ASGITransport(app=app.app, client=client)
    return httpx.AsyncClient(transport=transport, base_url=server, headers={"Host": host})


@pytest.mark.parametrize(
    ("client", "server", "host"),
    [
        (("203.0.113.9", 40000), "http://192.0.2.10:8000", "192.0.2.10:8000"),  # another machine
        (("127.0.0.1", 40000), "http://127.0.0.1:8000", "rebound.example:8000"),  # DNS rebinding
        (("127.0.0.1", 40000), "http://127.0.0.1:8000", "127.0.0.1.rebound.example"),
        (("127.0.0.1", 40000), "http://127.0.0.1:8000", ""),  # no Host at all
        (("127.0.0.1", 40000), "http://192.0.2.10:8000", "localhost"),  # a public address
        (("::ffff:203.0.113.9", 40000), "http://[::1]:8000", "[::1]:8000"),
    ],
    ids=["remote", "rebound-host", "rebound-lookalike", "no-host", "public-bind", "mapped-v4"],
)
async def test_without_a_token_only_loopback_is_answered(
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    client: tuple[str, int],
    server: str,
    host: str,
) -> None:
    async with app_without_token(database_url, redis_url, key_prefix) as app:
        async with client_of(app, client=client, server=server, host=host) as stranger:
            write = await stranger.post("/api/v1/posts", json=POST)
            read = await stranger.get("/api/v1/posts/1")  # the cached-read fast lane too
            status = await stranger.get("/status")
        async with client_of(
            app, client=("127.0.0.1", 1), server="http://127.0.0.1:8000", host="127.0.0.1:8000"
        ) as local:
            listed = (await local.get("/api/v1/posts")).json()
    for refused in (write, read, status):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "loopback_only"
        assert "POSTAL_API_TOKEN" in refused.json()["error"]["message"]
    assert listed["items"] == []  # the refused write changed nothing


@pytest.mark.parametrize(
    ("client", "server", "host"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000", "localhost:8000"),
        ("127.0.0.1", "http://127.0.0.1:8000", "LOCALHOST"),
        ("127.0.0.5", "http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("::1", "http://[::1]:8000", "[::1]:8000"),
        ("::1", "http://[::1]:8000", "[::1]"),
    ],
    ids=["localhost", "upper-case", "loopback-range", "ipv6", "ipv6-no-port"],
)
async def test_without_a_token_loopback_clients_write_without_one(
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    client: str,
    server: str,
    host: str,
) -> None:
    async with (
        app_without_token(database_url, redis_url, key_prefix) as app,
        client_of(app, client=(client, 40000), server=server, host=host) as local,
    ):
        created = await local.post("/api/v1/posts", json=POST)
        status = await local.get("/status")
    assert created.status_code == 201, created.text
    assert status.status_code == 200  # loopback-only: the machine's own users may see it


@pytest.mark.parametrize(
    ("access", "anonymous", "with_token"),
    [("open", 200, 200), ("token", 401, 200), ("off", 404, 404)],
)
async def test_metrics_access(
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    access: str,
    anonymous: int,
    with_token: int,
) -> None:
    env = {"POSTAL_METRICS_ACCESS": access}
    async with running_api(database_url, redis_url, key_prefix, **env) as api:
        assert (await api.client.get("/metrics")).status_code == anonymous
        answer = await api.client.get("/metrics", headers=AUTH)
    assert answer.status_code == with_token
    if with_token == 200:
        assert "postal_cache_operations_total" in answer.text


@pytest.mark.parametrize(("docs", "expected"), [("auto", 404), ("on", 200), ("off", 404)])
async def test_the_openapi_pages_with_a_token(
    database_url: str,
    clean_database: None,
    redis_url: str,
    key_prefix: str,
    docs: str,
    expected: int,
) -> None:
    async with running_api(database_url, redis_url, key_prefix, POSTAL_DOCS=docs) as api:
        for path in ("/docs", "/openapi.json"):
            assert (await api.client.get(path)).status_code == expected, path


async def test_without_a_token_the_openapi_pages_are_on(
    database_url: str, clean_database: None, redis_url: str, key_prefix: str
) -> None:
    async with (
        app_without_token(database_url, redis_url, key_prefix) as app,
        client_of(
            app, client=("127.0.0.1", 1), server="http://127.0.0.1:8000", host="localhost:8000"
        ) as local,
    ):
        assert (await local.get("/docs")).status_code == 200
        assert "/api/v1/posts" in (await local.get("/openapi.json")).json()["paths"]
