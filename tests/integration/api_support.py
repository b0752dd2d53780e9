"""Building the HTTP app for tests: real PostgreSQL, real Redis, httpx over ASGI, lifespan run;
and the app over a repository whose loads can be held (`running_gated`)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.app import create_app
from postal.posts.models import Post
from postal.posts.ports import PostRepository
from postal.settings import load_settings
from postal.storage.repository import SqlPostRepository

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TOKEN = "test-token-0123456789abcdefghijklmn"  # 36 characters: at least 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    post_selects: list[str]  # the SELECTs on posts the app ran (a `get`'s, whichever path)

    @property
    def state(self) -> Any:
        return self.app.state

    async def create(self, **fields: Any) -> dict[str, Any]:
        document = {"title": "Hello", "body": "First body", "author": "ada", "tags": ["a"]}
        document.update(fields)
        response = await self.client.post("/api/v1/posts", json=document, headers=AUTH)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def settle(self) -> None:
        """Wait for background fills, so the next read is answered from the cache."""
        await self.state.reads.drain(5.0)


@asynccontextmanager
async def running_api(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    repository: Callable[[AsyncEngine], PostRepository] = SqlPostRepository,
    tracer_provider: TracerProvider | None = None,
    **env: str,
) -> AsyncIterator[Api]:
    environ: Mapping[str, str] = {
        "DATABASE_URL": database_url,
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "POSTAL_API_TOKEN": TOKEN,
        **env,
    }
    selects: list[str] = []

    def counted(engine: AsyncEngine) -> PostRepository:
        return CountedGets(repository(engine), selects)

    app = create_app(load_settings(environ), repository=counted, tracer_provider=tracer_provider)
    async with app.router.lifespan_context(app):

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if in_get.get():  # counted by `CountedGets`: on PostgreSQL it bypasses this listener
                return
            if statement.lstrip().upper().startswith("SELECT") and "posts" in statement:
                selects.append(statement)

        event.listen(app.state.engine.sync_engine, "before_cursor_execute", record)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://postal.test") as client:
            yield Api(app, client, selects)


in_get: contextvars.ContextVar[bool] = contextvars.ContextVar("in_get", default=False)


class CountedGets:
    """A repository whose `get`s are counted as SELECTs: on PostgreSQL they go to the driver
    (`storage.driver`), which SQLAlchemy's statement events do not see."""

    def __init__(self, inner: PostRepository, selects: list[str]) -> None:
        self._inner = inner
        self._selects = selects

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, post_id: int) -> Post | None:
        self._selects.append(f"SELECT ... FROM posts WHERE id = {post_id}")
        token = in_get.set(True)
        try:
            return await self._inner.get(post_id)
        finally:
            in_get.reset(token)


class GatedRepository:
    """The real repository, whose `get` can be held after it has read, to force a race."""

    def __init__(self, inner: PostRepository) -> None:
        self._inner = inner
        self.loaded = asyncio.Event()
        self.release = asyncio.Event()
        self.gate = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, post_id: int) -> Post | None:
        post = await self._inner.get(post_id)
        if self.gate:
            self.loaded.set()
            await self.release.wait()
        return post


@asynccontextmanager
async def running_gated(
    database_url: str, redis_url: str, key_prefix: str, **env: str
) -> AsyncIterator[tuple[Api, GatedRepository]]:
    """The app over a GatedRepository, and that repository."""
    built: list[GatedRepository] = []

    def repository(engine: AsyncEngine) -> PostRepository:
        built.append(GatedRepository(SqlPostRepository(engine)))
        return built[-1]

    async with running_api(database_url, redis_url, key_prefix, repository, **env) as api:
        yield api, built[0]
