"""The HTTP app over ASGI with its lifespan: health, readiness with the cache's state."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
import pytest

from postal.app import create_app
from postal.settings import load_settings


async def serve_and_get(environ: dict[str, str], path: str) -> httpx.Response:
    app = create_app(load_settings(environ))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
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
    assert (body["status"], body["degraded"]) == ("ok", [])
    assert body["cache"]["serves"] is True
    assert body["cache"]["connected"] is True
    assert body["cache"]["pools"]["read"]["idle"] == 10
    assert body["cache"]["pools"]["write"]["idle"] == 5


async def test_readyz_is_ready_without_redis(key_prefix: str) -> None:
    environ = {"READ_REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_KEY_PREFIX": key_prefix}
    response = await serve_and_get(environ, "/readyz")
    assert response.status_code == 200  # the database answers every read
    assert response.json()["cache"]["connected"] is False
    assert response.json()["degraded"] == ["cache"]


async def test_readyz_is_not_ready_before_start_up(redis_url: str, key_prefix: str) -> None:
    app = create_app(load_settings({"READ_REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix}))
    transport = httpx.ASGITransport(app=app)  # no lifespan: nothing was built
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "starting"


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


async def test_the_near_cache_serves_hot_reads_and_its_metrics_say_so(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    environ = {
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "NEAR_CACHE_ENABLED": "true",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'near.db'}",
    }
    app = create_app(load_settings(environ))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            created = await client.post(
                "/api/v1/posts", json={"title": "t", "body": "b", "author": "a"}
            )
            path = created.headers["location"]
            deadline = asyncio.get_running_loop().time() + 5
            while not (await client.get("/readyz")).json()["cache"]["near"]["live"]:
                assert asyncio.get_running_loop().time() < deadline, "tracking never live"
                await asyncio.sleep(0.05)
            # A miss and a fill, a Redis hit stored, then memory hits. Bounded tries: the fill
            # runs in the background, and an invalidation push it brings about may refuse a
            # store or two.
            for _ in range(50):
                assert (await client.get(path)).json()["title"] == "t"
                near = (await client.get("/readyz")).json()["cache"]["near"]
                if near["hits"] >= 1:
                    break
                await asyncio.sleep(0.01)
            metrics = (await client.get("/metrics")).text
    assert near["hits"] >= 1
    assert near["entries"] == 1
    assert 'postal_near_cache_reads_total{outcome="hit"}' in metrics
    hits = float(metrics.split('postal_near_cache_reads_total{outcome="hit"} ')[1].split()[0])
    assert hits == near["hits"]
    assert "postal_near_cache_tracking_live 1.0" in metrics
