"""Building cache clients for integration tests against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from postal.cache import CacheClient, PoolConfig, Profile
from postal.cache.dns import DnsCache

FAST_MAINTENANCE = 0.05  # seconds: let the reaper and refiller act within a test's patience


def small_profile(**read_changes: object) -> Profile:
    """The tuned profile with a small read pool (changed as given) and a quick maintainer."""
    read = PoolConfig(max_size=10, min_idle=2, max_idle=5, maintenance_interval=FAST_MAINTENANCE)
    write = PoolConfig(max_size=5, min_idle=1, max_idle=2, maintenance_interval=FAST_MAINTENANCE)
    return Profile(read_pool=replace(read, **read_changes), write_pool=write)  # type: ignore[arg-type]


def make_client(
    redis_url: str, key_prefix: str, profile: Profile, dns: DnsCache | None = None
) -> CacheClient:
    return CacheClient.create(read_url=redis_url, profile=profile, key_prefix=key_prefix, dns=dns)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail with a clear message after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the state polled is the pool's, no event to await
            await asyncio.sleep(0.01)
