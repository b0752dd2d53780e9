"""The HTTP app over ASGI with its lifespan: health, readiness with the cache's state."""

from __future__ import annotations

import gc

import httpx
import pytest

from postal.app import create_app
from postal.settings import load_settings


async def serve_and_get(environ: dict[str, str], path: str) -> httpx.Response:
    app = create_app(load_settings(environ))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://postal") as client:
            return await client.get(path)


async def test_healthz(redis_url: str, key_prefix: str) -> None:
    response = await serve_and_get({"READ_REDIS_URL": redis_url}, "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_warm_pools(redis_url: str, key_prefix: str) -> None:
    environ = {"READ_REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix}
    response = await serve_and_get(environ, "/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["cache"]["connected"] is True
    assert body["cache"]["pools"]["read"]["idle"] == 10
    assert body["cache"]["pools"]["write"]["idle"] == 5


async def test_readyz_is_ready_without_redis(key_prefix: str) -> None:
    environ = {"READ_REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_KEY_PREFIX": key_prefix}
    response = await serve_and_get(environ, "/readyz")
    assert response.status_code == 200
    assert response.json()["cache"]["connected"] is False


@pytest.mark.parametrize(("setting", "frozen"), [("true", True), ("false", False)])
async def test_what_start_up_built_is_out_of_the_collectors_walks_while_serving(
    redis_url: str, key_prefix: str, setting: str, frozen: bool
) -> None:
    environ = {"READ_REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix}
    app = create_app(load_settings({**environ, "POSTAL_GC_FREEZE": setting}))
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        serving = gc.get_freeze_count()
    # Frozen: the app, its engine, cache and collectors are tens of thousands of objects.
    assert (serving > 10_000) is frozen
    assert serving == 0 or frozen
    assert gc.get_freeze_count() == 0  # handed back at shutdown
