"""The DNS cache with an injected resolver and clock: no network, no real time."""

import asyncio

import pytest

from postal.cache import DnsCache
from postal.cache.transport.dns import DnsLookupError
from tests.support.clock import SetClock


class CountingResolver:
    def __init__(self, answers: dict[str, list[str]], delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[str] = []
        self.fail = False

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("name server unreachable")
        return self.answers[host]


async def test_answers_from_the_cache_within_the_ttl() -> None:
    clock = SetClock(1000.0)
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]})
    dns = DnsCache(resolver, ttl=30.0, clock=clock)
    for _ in range(1000):
        assert await dns.resolve("redis.test", 6379) == ["10.0.0.7"]
    assert resolver.calls == ["redis.test"]
    assert dns.stats().resolved == 1
    assert dns.stats().cached == 999


async def test_resolves_again_after_the_ttl() -> None:
    clock = SetClock(1000.0)
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]})
    dns = DnsCache(resolver, ttl=30.0, clock=clock)
    await dns.resolve("redis.test", 6379)
    clock.now += 29.9
    await dns.resolve("redis.test", 6379)
    assert len(resolver.calls) == 1
    resolver.answers["redis.test"] = ["10.0.0.8"]
    clock.now += 0.2
    assert await dns.resolve("redis.test", 6379) == ["10.0.0.8"]
    assert len(resolver.calls) == 2


async def test_a_zero_ttl_resolves_every_time() -> None:
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]})
    dns = DnsCache(resolver, ttl=0.0, clock=SetClock(1000.0))
    for _ in range(5):
        await dns.resolve("redis.test", 6379)
    assert len(resolver.calls) == 5


async def test_concurrent_lookups_of_one_name_coalesce() -> None:
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]}, delay=0.01)
    dns = DnsCache(resolver, ttl=30.0, clock=SetClock(1000.0))
    answers = await asyncio.gather(*(dns.resolve("redis.test", 6379) for _ in range(100)))
    assert all(answer == ["10.0.0.7"] for answer in answers)
    assert resolver.calls == ["redis.test"]


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]}, delay=0.02)
    dns = DnsCache(resolver, ttl=30.0, clock=SetClock(1000.0))
    impatient = asyncio.ensure_future(dns.resolve("redis.test", 6379))
    patient = asyncio.ensure_future(dns.resolve("redis.test", 6379))
    await asyncio.sleep(0.005)
    impatient.cancel()
    assert await patient == ["10.0.0.7"]
    assert impatient.cancelled()


async def test_serves_the_last_good_answer_when_a_lookup_fails() -> None:
    clock = SetClock(1000.0)
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]})
    dns = DnsCache(resolver, ttl=30.0, clock=clock)
    await dns.resolve("redis.test", 6379)
    clock.now += 31
    resolver.fail = True
    assert await dns.resolve("redis.test", 6379) == ["10.0.0.7"]
    assert dns.stats().stale == 1
    # The stale answer is served for a grace period without asking again each time.
    await dns.resolve("redis.test", 6379)
    assert len(resolver.calls) == 2


async def test_a_failed_lookup_with_nothing_known_raises_dns_lookup_error() -> None:
    resolver = CountingResolver({})
    resolver.fail = True
    dns = DnsCache(resolver, ttl=30.0, clock=SetClock(1000.0))
    with pytest.raises(DnsLookupError, match=r"cannot resolve redis\.test"):
        await dns.resolve("redis.test", 6379)
    assert dns.stats().failed == 1


async def test_forget_makes_the_next_dial_resolve_again() -> None:
    resolver = CountingResolver({"redis.test": ["10.0.0.7"]})
    dns = DnsCache(resolver, ttl=30.0, clock=SetClock(1000.0))
    await dns.resolve("redis.test", 6379)
    resolver.answers["redis.test"] = ["10.0.0.9"]  # Redis moved
    dns.forget("redis.test")
    assert await dns.resolve("redis.test", 6379) == ["10.0.0.9"]
    assert len(resolver.calls) == 2


async def test_ip_addresses_are_never_looked_up() -> None:
    resolver = CountingResolver({})
    dns = DnsCache(resolver, ttl=30.0, clock=SetClock(1000.0))
    assert await dns.resolve("127.0.0.1", 6379) == ["127.0.0.1"]
    assert await dns.resolve("::1", 6379) == ["::1"]
    assert resolver.calls == []
