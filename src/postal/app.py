"""create_app(settings): builds the database engine, the cache and the service in the lifespan.

Nothing connects at import. Start-up: the engine (SQLite is migrated on first run; PostgreSQL
must already be, see `postal migrate`), the cache client (its pools warm up; a Redis that is down
is not an error), the read path and the invalidator. Shutdown, after uvicorn has finished the
requests in flight: pending fills are drained, the invalidator stops, pools and engine close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from postal import __version__
from postal.api.errors import install_error_handlers
from postal.api.fast_reads import PostalApp
from postal.api.guards import WriteGuard
from postal.api.openapi import install_openapi
from postal.api.routes import ops, posts, reads
from postal.cache import CacheClient
from postal.cache.fallback import ReadThrough
from postal.cache.invalidation import Invalidator
from postal.observability.logging import SlowOperationLog
from postal.posts.service import CacheTtls, PostService
from postal.settings import Settings, load_settings
from postal.storage.db import create_engine
from postal.storage.migrate import is_current, upgrade
from postal.storage.repository import PostRepository, SqlPostRepository

logger = logging.getLogger("postal.app")

DRAIN_TIMEOUT = 5.0  # seconds to let pending cache fills finish at shutdown


class NotMigrated(RuntimeError):
    """The database's schema is not at the latest migration."""


def build_cache(settings: Settings) -> CacheClient:
    """The cache client with both roles, as the settings describe; not yet started."""
    profile = settings.cache_profile()
    cache = CacheClient.create(
        read_url=settings.read_url,
        write_url=settings.write_url,
        profile=profile,
        tls=settings.tls(),
        key_prefix=settings.redis_key_prefix,
    )
    cache.subscribe(SlowOperationLog(profile.slow_threshold))
    return cache


async def prepare_database(url: str) -> None:
    """SQLite (the embedded default) migrates itself; any other database must be migrated."""
    if url.startswith("sqlite"):
        await upgrade(url)
    elif not await is_current(url):
        raise NotMigrated("the database is not migrated: run `postal migrate` first")


def create_app(
    settings: Settings,
    *,
    repository: Callable[[AsyncEngine], PostRepository] = SqlPostRepository,
) -> FastAPI:
    """The app; `repository` builds the posts repository on the engine (tests wrap it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each part is closed if a later one fails to start, and all in reverse at shutdown:
        # the read path drains (loads in flight, then their fills) before the engine and the
        # cache close under it.
        async with AsyncExitStack() as stack:
            await prepare_database(settings.database)
            engine = create_engine(
                settings.database, pool_size=settings.database_pool_size,
                timeout=settings.database_timeout,
            )  # fmt: skip
            stack.push_async_callback(engine.dispose)
            cache = build_cache(settings)
            stack.push_async_callback(cache.aclose)
            await cache.start()
            ttls = CacheTtls(
                post=settings.post_cache_ttl,
                page=settings.list_cache_ttl,
                not_found=settings.not_found_cache_ttl,
            )
            longest_ttl = max(ttls.post, ttls.page, ttls.not_found) * (
                1 + settings.cache_ttl_jitter
            )
            # After the longest TTL, whatever a failed invalidation left behind has expired.
            invalidator = Invalidator(cache, give_up_after=longest_ttl + 1.0)
            stack.push_async_callback(invalidator.aclose)
            reads_ = ReadThrough(
                cache,
                max_pending_fills=settings.cache_max_pending_fills,
                ttl_jitter=settings.cache_ttl_jitter,
                bypass=invalidator.is_pending,
                local_writes=invalidator.begun,
            )
            stack.push_async_callback(reads_.drain, DRAIN_TIMEOUT)
            app.state.engine = engine
            app.state.cache = cache
            app.state.reads = reads_
            app.state.invalidator = invalidator
            app.state.posts = PostService(repository(engine), reads_, invalidator, ttls)
            logger.info("cache ready: %r", cache)
            yield

    app = PostalApp(
        title="Postal",
        version=__version__,
        description="Posts and their versions, read through Redis.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry asks the global providers on every request (about
        # 18 us, measured in-process: a tenth of a cache hit). Postal exports its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.router.routes.extend(reads.routes)  # before the FastAPI routes: the hot path first
    app.include_router(posts.router)
    app.include_router(ops.router)
    install_openapi(app)
    # The request limit leaves room for JSON escaping of a body at the limit (up to 6 bytes per
    # character for control characters) plus the other fields.
    request_limit = 6 * settings.postal_max_body_bytes + 64 * 1024
    app.add_middleware(WriteGuard, token=settings.api_token, max_request_bytes=request_limit)
    return app


def app_from_environment() -> FastAPI:
    """The app as each `postal serve` worker builds it: settings from the environment."""
    from postal.observability.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.postal_log_level)
    return create_app(settings)
