"""A Redis cache layer that knows nothing about posts: managed pools, deadlines, DNS cache, circuit
breakers, generation-guarded values, read-through with fallback, and events.

from postal.cache import CacheClient
async with CacheClient.create(read_url="redis://127.0.0.1:6379/0") as cache:
    await cache.set("greeting", b"hello", ttl=60)
    assert await cache.get("greeting") == b"hello"

    invalidator = Invalidator(cache, give_up_after=400)
    reads = ReadThrough(cache, bypass=invalidator.is_pending)
    body = await reads.get(guarded("post", "42"), load)  # load() -> (payload bytes, ttl seconds)
    await invalidator.invalidate([guarded("post", "42")])  # after the database commit
"""

from postal.cache.breaker import BreakerChange, BreakerState, BreakerStats, CircuitBreaker
from postal.cache.client import USE_DEFAULT, CacheClient, CachePipeline, Timeout
from postal.cache.config import (
    BEFORE,
    NO_TLS,
    TUNED,
    BreakerConfig,
    CacheTimeouts,
    PoolConfig,
    Profile,
    TlsConfig,
)
from postal.cache.connection import Connector, PostalConnection
from postal.cache.dns import DnsCache, Resolver
from postal.cache.durations import EXPECTED as EXPECTED_DURATION
from postal.cache.durations import format_duration, parse_duration
from postal.cache.errors import (
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    CircuitOpen,
    PoolTimeout,
)
from postal.cache.events import CacheEvent, FillEvent, FillOutcome, Outcome, PoolWaitEvent
from postal.cache.fallback import Loader, ReadThrough, ReadThroughStats
from postal.cache.guard import GENERATION_TTL, Guarded, GuardedFill
from postal.cache.invalidation import Invalidator, InvalidatorStats
from postal.cache.keys import GuardedKey, guarded, jittered
from postal.cache.nodes import Node
from postal.cache.pool import CloseReason, ManagedPool, PoolStats
from postal.cache.urls import (
    CLUSTER_SCHEME,
    SECRET_QUERY_PARAMETER,
    SENTINEL_SCHEME,
    Kind,
    RedisEndpoint,
    Topology,
    mask_url,
)

__all__ = [
    "BEFORE",
    "CLUSTER_SCHEME",
    "EXPECTED_DURATION",
    "GENERATION_TTL",
    "NO_TLS",
    "SECRET_QUERY_PARAMETER",
    "SENTINEL_SCHEME",
    "TUNED",
    "USE_DEFAULT",
    "BreakerChange",
    "BreakerConfig",
    "BreakerState",
    "BreakerStats",
    "CacheClient",
    "CacheError",
    "CacheEvent",
    "CachePipeline",
    "CacheTimeout",
    "CacheTimeouts",
    "CacheUnavailable",
    "CircuitBreaker",
    "CircuitOpen",
    "CloseReason",
    "Connector",
    "DnsCache",
    "FillEvent",
    "FillOutcome",
    "Guarded",
    "GuardedFill",
    "GuardedKey",
    "Invalidator",
    "InvalidatorStats",
    "Kind",
    "Loader",
    "ManagedPool",
    "Node",
    "Outcome",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "PoolWaitEvent",
    "PostalConnection",
    "Profile",
    "ReadThrough",
    "ReadThroughStats",
    "RedisEndpoint",
    "Resolver",
    "Timeout",
    "TlsConfig",
    "Topology",
    "format_duration",
    "guarded",
    "jittered",
    "mask_url",
    "parse_duration",
]
