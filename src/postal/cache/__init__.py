"""A Redis cache layer that knows nothing about posts: managed pools, deadlines, DNS cache, events.

from postal.cache import CacheClient
async with CacheClient.create(read_url="redis://127.0.0.1:6379/0") as cache:
    await cache.set("greeting", b"hello", ttl=60)
    assert await cache.get("greeting") == b"hello"
"""

from postal.cache.client import USE_DEFAULT, CacheClient, CachePipeline
from postal.cache.config import BEFORE, TUNED, CacheTimeouts, PoolConfig, Profile, TlsConfig
from postal.cache.dns import DnsCache
from postal.cache.errors import CacheError, CacheTimeout, CacheUnavailable, PoolTimeout
from postal.cache.events import CacheEvent, Outcome
from postal.cache.pool import CloseReason, ManagedPool, PoolStats

__all__ = [
    "BEFORE",
    "TUNED",
    "USE_DEFAULT",
    "CacheClient",
    "CacheError",
    "CacheEvent",
    "CachePipeline",
    "CacheTimeout",
    "CacheTimeouts",
    "CacheUnavailable",
    "CloseReason",
    "DnsCache",
    "ManagedPool",
    "Outcome",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "Profile",
    "TlsConfig",
]
