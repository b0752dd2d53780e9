"""The caching policy, above the Redis transport: keys and their generations, the stale-fill
guard, read-through with a database fallback and early refresh, and invalidation that is retried
until it lands.

It uses the transport (`postal.cache.transport`) through its public names only, and knows nothing
of posts: a key is a name and an id, a value is bytes.
"""

from postal.cache.policy.client import CacheClient
from postal.cache.policy.events import FillEvent, FillListener, FillOutcome
from postal.cache.policy.fallback import ReadThrough, ReadThroughStats
from postal.cache.policy.guard import GENERATION_TTL, UNFILLABLE, Guarded, GuardedFill
from postal.cache.policy.invalidation import Invalidator, InvalidatorStats
from postal.cache.policy.keys import GuardedKey, all_epoch_keys, guarded, jittered
from postal.cache.policy.near import NearCache, NearCacheStats
from postal.cache.policy.refresh import (
    EarlyRefreshConfig,
    EarlyRefresher,
    EarlyRefreshStats,
    Loader,
    RefreshOutcome,
    refresh_due,
)

__all__ = [
    "GENERATION_TTL",
    "UNFILLABLE",
    "CacheClient",
    "EarlyRefreshConfig",
    "EarlyRefreshStats",
    "EarlyRefresher",
    "FillEvent",
    "FillListener",
    "FillOutcome",
    "Guarded",
    "GuardedFill",
    "GuardedKey",
    "Invalidator",
    "InvalidatorStats",
    "Loader",
    "NearCache",
    "NearCacheStats",
    "ReadThrough",
    "ReadThroughStats",
    "RefreshOutcome",
    "all_epoch_keys",
    "guarded",
    "jittered",
    "refresh_due",
]
