"""create_app(settings): builds the cache client and the HTTP app; nothing connects at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from postal import __version__
from postal.api.routes import ops
from postal.cache import CacheClient
from postal.observability.logging import SlowOperationLog
from postal.settings import Settings

logger = logging.getLogger("postal.app")


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


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cache = build_cache(settings)
        await cache.start()
        logger.info("cache ready: %r", cache)
        app.state.cache = cache
        try:
            yield
        finally:
            await cache.aclose()

    app = FastAPI(title="Postal", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(ops.router)
    return app
