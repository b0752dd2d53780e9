"""Building cache clients for integration tests against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from postal.cache import CacheClient, CacheTimeouts, DnsCache, PoolConfig, Profile

FAST_MAINTENANCE = 0.05  # seconds: let the reaper and refiller act within a test's patience


def small_profile(**read_changes: object) -> Profile:
    """The tuned profile with a small read pool (changed as given) and a quick maintainer."""
    read = PoolConfig(max_size=10, min_idle=2, max_idle=5, maintenance_interval=FAST_MAINTENANCE)
    write = PoolConfig(max_size=5, min_idle=1, max_idle=2, maintenance_interval=FAST_MAINTENANCE)
    return Profile(read_pool=replace(read, **read_changes), write_pool=write)  # type: ignore[arg-type]


def pooled_profile(**read_changes: object) -> Profile:
    """`small_profile` with every read on a pooled connection (no read pipeline): for tests of
    the pool's own behaviour, which the pipeline's one shared connection would bypass."""
    return replace(small_profile(**read_changes), read_pipeline=None)


_ONE_CONNECTION = PoolConfig(
    max_size=1, min_idle=1, max_idle=1, pool_timeout=2.0, dial_timeout=2.0, read_timeout=2.0,
    write_timeout=2.0,
)  # fmt: skip

# One connection per role and generous deadlines, for tests about TLS or authentication rather
# than timing: with max_size=1 the maintainer never dials while an operation holds the
# connection, so at aclose() every connection the test opened is idle in its pool.
ONE_CONNECTION = Profile(
    read_pool=_ONE_CONNECTION,
    write_pool=_ONE_CONNECTION,
    timeouts=CacheTimeouts(get=2.0, set=2.0),
)


def make_client(
    redis_url: str, key_prefix: str, profile: Profile, dns: DnsCache | None = None
) -> CacheClient:
    return CacheClient.create(read_url=redis_url, profile=profile, key_prefix=key_prefix, dns=dns)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail with a clear message after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the state polled is the pool's, no event to await
            await asyncio.sleep(0.01)
