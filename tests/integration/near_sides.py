"""What the near cache's integration tests share: a `Side` (one process's view of a Redis
topology: its client, near cache, read-through and invalidator), and waiting for a state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from postal.cache import (
    CacheClient,
    GuardedKey,
    Invalidator,
    NearCache,
    Profile,
    ReadThrough,
    guarded,
)
from tests.integration.helpers import small_profile

# A heartbeat each 0.1 s, and tracking not live after 1 s without a PONG: short, for the
# tests that wait for a lapse, with room for a stall of the test's process (past the margin,
# a read would bypass memory for a turn and a served_from_memory check would fail).
HEARTBEAT, DEAD_AFTER = 0.1, 1.0
KEY = guarded("post", "1")

Loader = Callable[[], Awaitable[tuple[bytes, float]]]


async def never_loaded() -> tuple[bytes, float]:
    raise AssertionError("every read is answered by Redis or the near cache here")


@dataclass
class Side:
    """One process's view: its client, near cache, read-through and invalidator."""

    cache: CacheClient
    near: NearCache
    reads: ReadThrough
    invalidator: Invalidator

    async def read(self, key: GuardedKey = KEY, load: Loader = never_loaded) -> bytes:
        return await self.reads.get(key, load)

    async def write(self, payload: bytes, key: GuardedKey = KEY) -> None:
        """A writer's sequence: invalidate (it has committed), then fill the new value."""
        (generation,) = await self.cache.invalidate_many([key])
        assert await self.cache.fill_guarded(key, generation, payload, ttl=60)


@asynccontextmanager
async def side(
    url: str, prefix: str, *, near_cache: bool = True, profile: Profile | None = None
) -> AsyncIterator[Side]:
    profile = profile or small_profile()
    cache = CacheClient.create(read_url=url, profile=profile, key_prefix=prefix)
    async with cache:
        near = NearCache(key_prefix=cache.key(""), max_bytes=1 << 20, ttl=30)
        tracking = cache.tracking(near, heartbeat=HEARTBEAT, dead_after=DEAD_AFTER)
        near.tracking = tracking if near_cache else None
        if near_cache:
            tracking.start()
        invalidator = Invalidator(cache, give_up_after=60, near=near)
        reads = ReadThrough(cache, bypass=invalidator.is_pending, near=near)
        try:
            yield Side(cache, near, reads, invalidator)
        finally:
            await tracking.aclose()
            await invalidator.aclose()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time given"
        await asyncio.sleep(0.02)


async def served_from_memory(reader: Side, key: GuardedKey = KEY) -> bytes:
    """Two reads: the first may store the entry, the second must then be a near-cache hit."""
    await reader.read(key)
    hits = reader.near.stats().hits
    payload = await reader.read(key)
    assert reader.near.stats().hits == hits + 1, "the second read was not served from memory"
    return payload
