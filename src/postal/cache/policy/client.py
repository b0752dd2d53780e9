"""CacheClient: the transport's `RedisClient`, plus generation-guarded values.

The guarded operations close the stale-fill race (see `guard`): a reader's late fill
can never overwrite a writer's invalidation. They run through the transport's executor like any
command (same roles, deadlines, breakers, errors and events), using only its public names; this
class adds them to the client so that a caller holds one object for plain and guarded operations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from postal.cache.policy.guard import Guarded, GuardedFill, GuardedOps
from postal.cache.policy.keys import GuardedKey
from postal.cache.transport import USE_DEFAULT, RedisClient, Timeout


class CacheClient(RedisClient):
    """A `RedisClient` with generation-guarded reads, fills and invalidations."""

    @functools.cached_property
    def _guarded(self) -> GuardedOps:
        return GuardedOps(self)

    async def get_guarded(self, key: GuardedKey, *, timeout: Timeout = USE_DEFAULT) -> Guarded:
        """Value (if stamped with the current generation) and generation: one MGET, read role,
        GET deadline; the event says "GET", hit or miss. See `GuardedOps.get`."""
        return await self._guarded.get(key, timeout)

    async def fill_guarded(
        self,
        key: GuardedKey,
        generation: int,
        payload: bytes,
        *,
        ttl: float,
        timeout: Timeout = USE_DEFAULT,
    ) -> bool:
        """Store `payload` for `ttl` s if the generation is still `generation`; False if not.
        Write role, SET deadline. See `GuardedOps.fill`."""
        return await self._guarded.fill(key, generation, payload, ttl, timeout)

    async def invalidate(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> None:
        """Bump the generations of `keys` and delete them; bump the bare counters `generations`.
        One pipeline, write role, SET deadline. See `GuardedOps.invalidate`."""
        await self._guarded.invalidate(keys, generations, timeout)

    # Batch forms, for many keys at once (a bulk import): one script call, one round trip, a
    # batch. Write role, SET deadline: a batch of thousands of keys may need a longer `timeout`.

    async def invalidate_many(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> list[int]:
        """As `invalidate`; the new generation of each of `keys`, which a fill of its new value
        quotes. See `GuardedOps.invalidate_many`."""
        return await self._guarded.invalidate_many(keys, generations, timeout)

    async def fill_guarded_many(
        self, fills: Sequence[GuardedFill], *, timeout: Timeout = USE_DEFAULT
    ) -> int:
        """`fill_guarded` for each of `fills`; how many were written. See
        `GuardedOps.fill_many`."""
        return await self._guarded.fill_many(fills, timeout)
