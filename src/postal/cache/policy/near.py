"""The near cache: hot entries in this process's memory, kept coherent by Redis's invalidations.

A hit here costs no round trip, no pool and no parse. What keeps it coherent:

- **Who says what changed:** Redis, through the transport's `Tracking` (CLIENT TRACKING, BCAST
  under the client's key prefix, one connection per server reads go to; on a cluster, per
  master, followed as the slot table changes, each change a flush). This object is its
  listener: an `invalidate` push drops the entries of those keys, applied in the connection's
  receive callback; `invalidate null` (FLUSHALL, FLUSHDB) drops everything.
- **Only while tracking is live:** `usable()` is false while any tracking connection is down,
  not yet confirmed, or its heartbeat is late: reads then skip this cache. Bytes waiting unread
  on a tracking connection (an invalidation may be among them) are read and applied first
  (`Tracking.catch_up`); only where that cannot be done (TLS) do reads skip this cache. Each
  time tracking stops being live or is confirmed anew, everything is dropped: it may have
  missed an invalidation. That covers a restarted Redis (whose generation counters start
  again), a failover, a killed connection, and tracking refused by an ACL or an old server
  (never live, never used).
- **The fill race:** a GET's reply may be older than an invalidation that arrived meanwhile on
  the tracking connection. A reader takes `sequence` before it sends its GET, and `put` stores
  the reply only if no invalidation of its key (its value, generation or epoch key), no flush
  and no own write of it came in since: a stale reply is never stored, by construction. Each
  event moves `sequence` and is stamped with it, per key, in a bounded history of the last
  `RECENT_INVALIDATIONS` keys invalidated; a read older than what the history still holds is
  not stored. Per key, not one counter for all: every fill a miss makes is a write under the
  prefix, so with one counter a steady 10% of misses left almost no read able to store (the
  seed's load: 125 near-cache hits in 10,000 reads).
- **Own writes:** the `Invalidator` evicts its process's entries synchronously, before it sends
  the invalidation and again once Redis has taken it, so the writer's next read cannot be
  served what its own write replaced.
- **What is held:** the guarded read as Redis answered it (`Guarded`): the payload, and the
  generation and expiry stamped with it, so that a hit from memory can decide on an early
  refresh of the Redis entry as a Redis hit does (`refresh`).
- **Bounds:** bytes, not entries (`max_bytes`, each entry counted with its key and an overhead),
  least recently used out first; and a TTL of its own (`ttl`), below Redis's, so that an entry
  whose key expired in Redis but was never touched there again (no invalidation is sent for it
  until Redis deletes it) goes too.

Written by hand: no library keeps an in-process cache coherent with Redis's invalidations; the
store is an `OrderedDict` (an LRU in the standard library, O(1) a hit).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from postal.cache.policy.guard import Guarded
from postal.cache.transport import Tracking

ENTRY_OVERHEAD = 240  # bytes an entry costs beyond its key and payload: dict slot, tuple, set
# Keys whose last invalidation is remembered (for `put`'s check); past it the oldest is
# forgotten, and reads sent before it can no longer store. 16,384 keys is seconds of invalidations
# at the busiest rates seen, against milliseconds a read takes. Not counted in `max_bytes`:
# 2.75 MiB measured for 16,384 keys of the form "postal:post:{n}:gen", more for longer keys.
RECENT_INVALIDATIONS = 16_384


@dataclass(frozen=True, slots=True)
class NearCacheStats:
    hits: int
    misses: int
    stores: int
    stale_rejected: int  # replies not stored: an invalidation came in while they were read
    evicted_size: int  # dropped to stay within max_bytes
    evicted_ttl: int  # dropped at their own TTL
    invalidated: int  # dropped by an invalidation (Redis's, or this process's own write)
    flushes: int  # everything dropped: FLUSHALL/FLUSHDB, or tracking down or confirmed anew
    invalidations: int  # invalidate messages received from Redis
    entries: int
    bytes: int
    live: bool  # tracking live on every server reads go to


class NearCache:
    """Payloads by their full Redis key (the client's prefix included), bounded in bytes."""

    def __init__(
        self,
        *,
        key_prefix: str,
        max_bytes: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1 or ttl <= 0:
            raise ValueError("max_bytes must be at least 1 and ttl positive")
        self._prefix = key_prefix
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._clock = clock
        # full key -> (the read, expires at, the full keys of its generation and epoch, bytes)
        self._entries: OrderedDict[str, tuple[Guarded, float, tuple[str, ...], int]] = OrderedDict()
        # a generation or epoch key -> the entries it guards
        self._by_generation: dict[str, set[str]] = {}
        self._bytes = 0
        self.sequence = 0  # moves on every invalidation, flush and own write
        # full key -> the `sequence` of its last invalidation (or own write), oldest first;
        # at most RECENT_INVALIDATIONS keys
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._forgotten = 0  # the latest stamp dropped from `_recent`
        self._flushed = 0  # the `sequence` of the last flush
        self.tracking: Tracking | None = None
        self._hits = self._misses = self._stores = self._stale = 0
        self._evicted_size = self._evicted_ttl = self._invalidated = 0
        self._flushes = self._invalidations = 0

    # -- the reader's side -------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether entries may be served and stored now: tracking live, and nothing left
        unread on it (what waited was applied just now)."""
        tracking = self.tracking
        return tracking is not None and tracking.live and tracking.catch_up()

    def get(self, key: str) -> Guarded | None:
        """The read stored under `key` (without the client's prefix), if any and fresh; its
        payload is never None."""
        full = self._prefix + key
        entry = self._entries.get(full)
        if entry is None:
            self._misses += 1
            return None
        if self._clock() >= entry[1]:
            self._drop(full)
            self._evicted_ttl += 1
            self._misses += 1
            return None
        self._entries.move_to_end(full)
        self._hits += 1
        return entry[0]

    def put(
        self,
        key: str,
        generation_key: str,
        found: Guarded,
        sequence: int,
        epoch_key: str | None = None,
    ) -> bool:
        """Store the hit `found` that a read taken at `sequence` returned, unless anything was
        invalidated since (or tracking is not usable now). Keys without the client's prefix. A
        change to the generation or to the epoch (the coarse invalidation bumps every slot's)
        drops it."""
        payload = found.payload
        if payload is None:
            raise ValueError("only a hit is stored in the near cache")
        full = self._prefix + key
        guards = tuple(self._prefix + guard for guard in (generation_key, epoch_key) if guard)
        # `usable()` first: it applies what waits unread on the tracking connection, which may
        # be this very key's invalidation; asked after the check, it let such a reply in (seen
        # under `postal bench faults`: a version served from memory after its write returned).
        if not self.usable() or self._changed_since(sequence, full, guards):
            self._stale += 1
            return False
        size = len(payload) + len(full) + ENTRY_OVERHEAD
        if size > self._max_bytes:
            return False
        if full in self._entries:
            self._drop(full)
        self._entries[full] = (found, self._clock() + self._ttl, guards, size)
        for guard in guards:
            self._by_generation.setdefault(guard, set()).add(full)
        self._bytes += size
        self._stores += 1
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._evicted_size += 1
        return True

    def _changed_since(self, sequence: int, full: str, guards: tuple[str, ...]) -> bool:
        """Whether a read sent at `sequence` may have been overtaken: a flush since, an
        invalidation of its key or a guard since, or one the history no longer holds."""
        if sequence < self._flushed or sequence < self._forgotten:
            return True
        if sequence == self.sequence:
            return False  # nothing at all happened since (the common case, one comparison)
        recent = self._recent
        return any(recent.get(key, 0) > sequence for key in (full, *guards))

    # -- what changed: Redis's invalidations, and this process's own writes --------------------

    def invalidated(self, keys: Sequence[bytes] | None) -> None:
        """An `invalidate` push (full keys; None: FLUSHALL or FLUSHDB). Synchronous."""
        self._invalidations += 1
        if keys is None:
            self._flush()
            return
        self._evict_full(key.decode() for key in keys)

    def tracking_changed(self, live: bool) -> None:
        """Tracking went down, or was confirmed anew: anything held may have missed an
        invalidation."""
        self._flush()

    def evict(self, keys: Iterable[str]) -> None:
        """This process's own write of `keys` (values or generations, without the prefix)."""
        self._evict_full(self._prefix + key for key in keys)

    def _evict_full(self, keys: Iterable[str]) -> None:
        self.sequence += 1
        stamp = self.sequence
        recent = self._recent
        for key in keys:
            recent[key] = stamp
            recent.move_to_end(key)
            if len(recent) > RECENT_INVALIDATIONS:
                _, self._forgotten = recent.popitem(last=False)
            if key in self._entries:
                self._drop(key)
                self._invalidated += 1
            for guarded_key in self._by_generation.pop(key, ()):
                if guarded_key in self._entries:
                    self._drop(guarded_key)
                    self._invalidated += 1

    def _flush(self) -> None:
        self.sequence += 1
        self._flushed = self.sequence
        self._recent.clear()  # older than the flush: `_flushed` covers them
        self._entries.clear()
        self._by_generation.clear()
        self._bytes = 0
        self._flushes += 1

    def _drop(self, key: str) -> None:
        _, _, guards, size = self._entries.pop(key)
        self._bytes -= size
        for guard in guards:
            guarded = self._by_generation.get(guard)
            if guarded is not None:
                guarded.discard(key)
                if not guarded:
                    del self._by_generation[guard]

    def stats(self) -> NearCacheStats:
        tracking = self.tracking
        return NearCacheStats(
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            stale_rejected=self._stale,
            evicted_size=self._evicted_size,
            evicted_ttl=self._evicted_ttl,
            invalidated=self._invalidated,
            flushes=self._flushes,
            invalidations=self._invalidations,
            entries=len(self._entries),
            bytes=self._bytes,
            live=tracking is not None and tracking.live,
        )
