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
from postal.cache.client import USE_DEFAULT, CacheClient, CachePipeline
from postal.cache.config import (
    BEFORE,
    TUNED,
    BreakerConfig,
    CacheTimeouts,
    PoolConfig,
    Profile,
    TlsConfig,
)
from postal.cache.dns import DnsCache
from postal.cache.errors import (
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    CircuitOpen,
    PoolTimeout,
)
from postal.cache.events import CacheEvent, FillEvent, FillOutcome, Outcome
from postal.cache.fallback import ReadThrough, ReadThroughStats
from postal.cache.guard import GENERATION_TTL, Guarded
from postal.cache.invalidation import Invalidator, InvalidatorStats
from postal.cache.keys import GuardedKey, guarded, jittered
from postal.cache.pool import CloseReason, ManagedPool, PoolStats

__all__ = [
    "BEFORE",
    "GENERATION_TTL",
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
    "DnsCache",
    "FillEvent",
    "FillOutcome",
    "Guarded",
    "GuardedKey",
    "Invalidator",
    "InvalidatorStats",
    "ManagedPool",
    "Outcome",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "Profile",
    "ReadThrough",
    "ReadThroughStats",
    "TlsConfig",
    "guarded",
    "jittered",
]
