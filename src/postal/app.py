"""create_app(settings): builds the database engine, the cache and the service in the lifespan.

Nothing connects at import. Start-up: the engine (SQLite is migrated on first run; PostgreSQL
must already be, see `postal migrate`), the deployment's cursor key (made on first start), the
cache client (its pools warm up; a Redis that is down is not an error), the read path and the
invalidator.

Who may ask what is decided here too, whatever server runs the app: with no API token the app
answers loopback clients only (`api/loopback.py`); with one, writes and `/status` need it, and
`/metrics` and the OpenAPI pages are as their settings say. Shutdown, after uvicorn has finished the
requests in flight: early refreshes and pending fills are drained, the invalidator stops, pools
and engine close.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from postal import __version__
from postal.api.access_log import AccessLog
from postal.api.errors import install_error_handlers
from postal.api.fast_reads import PostalApp
from postal.api.guards import WriteGuard
from postal.api.http_metrics import HttpMetrics
from postal.api.openapi import install_openapi
from postal.api.routes import imports, ops, posts, reads
from postal.api.routes.ops import METRICS_PATH, STATUS_PATH
from postal.api.tracing import RequestSpans
from postal.cache import (
    CacheClient,
    DnsCache,
    Invalidator,
    NearCache,
    Profile,
    ReadThrough,
    Resolver,
)
from postal.imports.importer import PostImporter
from postal.observability.cache_metrics import instrument_cache
from postal.observability.logging import SlowOperationLog
from postal.observability.metrics import PostalMetrics
from postal.observability.tracing import (
    RedisSpans,
    SqlSpans,
    TracedNearCache,
    install_provider,
    provider_from_environment,
    tracer_of,
)
from postal.posts.cursors import Cursors
from postal.posts.ports import PostRepository
from postal.posts.service import CacheTtls, PostService
from postal.runtime import start_up_frozen
from postal.settings import Settings, load_settings
from postal.storage.db import create_engine
from postal.storage.deployment_keys import CURSOR_KEY, deployment_key
from postal.storage.import_store import SqlImportStore
from postal.storage.migrate import is_current, upgrade
from postal.storage.repository import SqlPostRepository

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

logger = logging.getLogger("postal.app")

DRAIN_TIMEOUT = 5.0  # seconds to let early refreshes and pending cache fills finish at shutdown
DOCS_PATHS = {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}


class NotMigrated(RuntimeError):
    """The database's schema is not at the latest migration."""


def build_cache(
    settings: Settings, *, profile: Profile | None = None, resolver: Resolver | None = None
) -> CacheClient:
    """The cache client with both roles, as the settings describe; not yet started.

    `profile` replaces the settings' pools, deadlines and breaker (the benchmarks' "before");
    `resolver` replaces the system's DNS under the cache (the benchmarks' slow or failing DNS).
    """
    profile = profile or settings.cache_profile()
    dns = None if resolver is None else DnsCache(resolver, ttl=profile.dns_ttl)
    cache = CacheClient.create(
        read_url=settings.read_url,
        write_url=settings.write_url,
        profile=profile,
        tls=settings.tls(),
        dns=dns,
        key_prefix=settings.redis_key_prefix,
    )
    cache.subscribe(SlowOperationLog(profile.slow_threshold))
    return cache


def cache_ttls(settings: Settings) -> CacheTtls:
    return CacheTtls(
        post=settings.post_cache_ttl,
        page=settings.list_cache_ttl,
        not_found=settings.not_found_cache_ttl,
    )


def invalidator_for(
    cache: CacheClient, settings: Settings, near: NearCache | None = None
) -> Invalidator:
    """The invalidator, as the service and `postal import` use it; not yet retrying."""
    ttls = cache_ttls(settings)
    longest_ttl = max(ttls.post, ttls.page, ttls.not_found) * (1 + settings.cache_ttl_jitter)
    # After the longest TTL, whatever a failed invalidation left behind has expired.
    return Invalidator(
        cache,
        give_up_after=longest_ttl + 1.0,
        near=near,
        max_pending_keys=settings.cache_max_pending_invalidations,
    )


def near_cache_for(
    cache: CacheClient, settings: Settings, kind: type[NearCache] = NearCache
) -> NearCache | None:
    """The near cache with its tracking attached (not started), or None: turned off. `kind`:
    `TracedNearCache` when tracing is on."""
    if not settings.near_cache_enabled:
        return None
    near = kind(
        key_prefix=cache.key(""),
        max_bytes=settings.near_cache_max_bytes,
        ttl=settings.near_cache_ttl,
    )
    near.tracking = cache.tracking(near)
    return near


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
    profile: Profile | None = None,
    resolver: Resolver | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The app; `repository` builds the posts repository on the engine (tests wrap it);
    `profile` and `resolver` go to `build_cache` (benchmarks set them). With POSTAL_TRACING on,
    spans go to `tracer_provider` (tests give one with an in-memory exporter), else to one
    built from the OTEL_* environment and made the process's global provider."""
    tracer: Tracer | None = None
    provider = tracer_provider
    if settings.postal_tracing:  # `observability/tracing.py`; off: none of this is built
        if provider is None:
            provider = provider_from_environment(__version__)
            install_provider(provider)
        tracer = tracer_of(provider)
    # Prometheus collectors of this app's own (or, under `postal serve --workers N`, files all
    # workers share): fed by the cache's events and snapshots, and by the HTTP middleware.
    metrics = PostalMetrics.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each part is closed if a later one fails to start, and all in reverse at shutdown:
        # the read path drains (loads in flight, then their fills) before the engine and the
        # cache close under it.
        async with AsyncExitStack() as stack:
            metrics.forget_dead_workers()
            stack.callback(metrics.close)  # last: a final sample, once the cache has closed
            if tracer is not None and provider is not None:
                # Last but one: the spans still batched are exported (ours, flushed; the
                # caller's, left running).
                stack.callback(
                    provider.shutdown if tracer_provider is None else provider.force_flush
                )
            await prepare_database(settings.database)
            engine = create_engine(
                settings.database, pool_size=settings.database_pool_size,
                timeout=settings.database_timeout,
                idle_in_transaction=settings.database_idle_in_transaction_timeout,
            )  # fmt: skip
            stack.push_async_callback(engine.dispose)
            if tracer is not None:
                SqlSpans(tracer, engine).attach(engine)
            cursors = Cursors(await deployment_key(engine, CURSOR_KEY))
            cache = build_cache(settings, profile=profile, resolver=resolver)
            if tracer is not None:
                cache.subscribe(RedisSpans(tracer))
            stack.push_async_callback(cache.aclose)
            await cache.start()
            ttls = cache_ttls(settings)
            near = near_cache_for(cache, settings, NearCache if tracer is None else TracedNearCache)
            if near is not None and near.tracking is not None:
                near.tracking.start()
                stack.push_async_callback(near.tracking.aclose)
            invalidator = invalidator_for(cache, settings, near)
            stack.push_async_callback(invalidator.aclose)
            reads_ = ReadThrough(
                cache,
                max_pending_fills=settings.cache_max_pending_fills,
                ttl_jitter=settings.cache_ttl_jitter,
                bypass=invalidator.is_pending,
                local_writes=invalidator.begun,
                near=near,
                early_refresh=settings.early_refresh(),
            )
            stack.push_async_callback(reads_.drain, DRAIN_TIMEOUT)
            instrument_cache(metrics, cache, reads_, invalidator, near)
            await stack.enter_async_context(metrics.refreshing())
            app.state.engine = engine
            app.state.cache = cache
            app.state.reads = reads_
            app.state.invalidator = invalidator
            app.state.near = near
            app.state.posts = PostService(
                repository(engine), reads_, invalidator, ttls,
                cursors=cursors, max_page_bytes=settings.postal_max_page_bytes,
            )  # fmt: skip
            app.state.import_slots = imports.ImportSlots(settings.postal_max_concurrent_imports)
            app.state.importer = PostImporter(
                SqlImportStore(engine),
                cache,
                invalidator,
                ttls=ttls,
                max_body_bytes=settings.postal_max_body_bytes,
                ttl_jitter=settings.cache_ttl_jitter,
            )
            logger.info("cache ready: %r", cache)
            if settings.loopback_only:
                logger.warning(
                    "POSTAL_API_TOKEN is not set: answering loopback clients only (Host"
                    " localhost, 127.0.0.1 or [::1]), and their writes need no token"
                )
            # Last: everything start-up built is in the heap by now.
            stack.enter_context(start_up_frozen(settings.postal_gc_freeze))
            yield

    app = PostalApp(
        title="Postal",
        version=__version__,
        description="Posts and their versions, read through Redis.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry asks the global providers on every request (about
        # 18 us, measured in-process: a tenth of a cache hit). Postal exports its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        **(DOCS_PATHS if settings.docs_enabled else dict.fromkeys(DOCS_PATHS)),
    )
    app.state.metrics = metrics
    app.measure = partial(HttpMetrics, metrics=metrics, routes=app.router.routes)
    app.max_in_flight = settings.postal_max_in_flight  # admission: `api/admission.py`
    app.turn_budget = settings.postal_turn_budget or None  # `api/turn_budget.py`; 0: off
    app.loopback_only = settings.loopback_only  # no token: `api/loopback.py`
    app.access_log = AccessLog() if settings.postal_access_log else None  # `api/access_log.py`
    app.tracing = None if tracer is None else RequestSpans(tracer)  # `api/tracing.py`
    app.state.settings = settings
    app.state.started_at = time.time()  # for /status's uptime
    install_error_handlers(app)
    app.router.routes.extend(reads.routes)  # before the FastAPI routes: the hot path first
    app.include_router(posts.router)
    app.include_router(imports.router)
    app.include_router(ops.router)
    if settings.postal_metrics_access != "off":
        app.include_router(ops.metrics_router)
    # The request limit leaves room for JSON escaping of a body at the limit (up to 6 bytes per
    # character for control characters) plus the other fields.
    request_limit = 6 * settings.postal_max_body_bytes + 64 * 1024
    # The CSV import streams its body (never held whole): a limit of its own, far larger.
    guarded_reads = {STATUS_PATH}  # it names the servers, the key prefix, the pool settings
    if settings.postal_metrics_access == "token":
        guarded_reads.add(METRICS_PATH)
    install_openapi(
        app, token_set=settings.api_token is not None, guarded_reads=frozenset(guarded_reads)
    )
    app.add_middleware(
        WriteGuard,
        token=settings.api_token,
        max_request_bytes=request_limit,
        streamed={imports.PATH: settings.postal_max_import_bytes},
        guarded_reads=frozenset(guarded_reads),
    )
    return app


def app_from_environment() -> FastAPI:
    """The app as each `postal serve` worker builds it: settings from the environment."""
    from postal.observability.logging import configure_from_settings

    settings = load_settings()
    configure_from_settings(settings)
    return create_app(settings)
