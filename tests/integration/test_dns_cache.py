"""The DNS cache under real connections: one lookup for many dials, re-resolve after a failure."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import redis.asyncio as redis

from postal.cache import CacheClient, CacheUnavailable, DnsCache
from tests.integration.helpers import pooled_profile


class CountingResolver:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        return [answer]


def hostname_url(redis_url: str, host: str) -> str:
    return redis_url.replace("127.0.0.1", host)


async def test_a_thousand_new_connections_within_the_ttl_cost_one_lookup(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    resolver = CountingResolver("127.0.0.1")
    dns = DnsCache(resolver, ttl=60.0)
    # max idle 0: every operation dials a new connection (the "before" pool's behaviour).
    profile = pooled_profile(max_size=10, min_idle=0, max_idle=0, max_idle_grace=0.0)
    async with CacheClient.create(
        read_url=hostname_url(redis_url, "redis.test"),
        profile=profile,
        dns=dns,
        key_prefix=key_prefix,
    ) as client:
        async with asyncio.timeout(60):
            await asyncio.gather(*(client.get("k", timeout=None) for _ in range(1000)))
        assert client.stats()["read"].opened >= 1000
        assert resolver.calls == 1


async def test_a_failed_dial_makes_the_next_one_resolve_again(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    # First answer: an address where nothing listens (Redis "moved"); then the right one.
    resolver = CountingResolver("127.0.0.2", "127.0.0.1")
    dns = DnsCache(resolver, ttl=60.0)
    read_only = pooled_profile(min_idle=0)
    profile = replace(read_only, write_pool=replace(read_only.write_pool, min_idle=0))
    async with CacheClient.create(
        read_url=hostname_url(redis_url, "redis.test"),
        profile=profile,
        dns=dns,
        key_prefix=key_prefix,
    ) as client:
        with pytest.raises(CacheUnavailable, match=r"redis\.test\(127\.0\.0\.2\)"):
            await client.get("k", timeout=1.0)
        assert await client.get("k", timeout=1.0) is None
        assert resolver.calls == 2


async def test_every_resolved_address_is_tried_in_turn(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    """The first address is dead (as `localhost` -> ::1 with Redis on IPv4 only): not fatal."""

    async def two_addresses(host: str, port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"]

    async with CacheClient.create(
        read_url=hostname_url(redis_url, "redis.test"),
        profile=pooled_profile(min_idle=1),
        dns=DnsCache(two_addresses, ttl=60.0),
        key_prefix=key_prefix,
    ) as client:
        assert await client.get("k", timeout=1.0) is None
        assert client.stats()["read"].opened >= 1
