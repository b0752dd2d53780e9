"""Locating through Sentinels that do not answer: three real Sentinels over a primary and a
replica, some of them stopped with SIGSTOP (a hung process: the port still accepts
connections, nothing answers on them), which is worse for a client than a dead one (refused at
once).

One stopped Sentinel must not cost a dial its whole dial timeout (the Sentinels are asked at
once, the first valid answer wins); with all of them stopped, the last answer is used again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from postal.cache import CacheClient, Topology
from postal.cache.transport.dns import DnsLookupError
from postal.cache.transport.sentinel import SentinelLocator
from postal_testing.redis_servers import RedisServer
from postal_testing.topologies import SentinelSet
from tests.integration.helpers import small_profile

pytestmark = pytest.mark.redis_server

DIAL_TIMEOUT = 2.0  # seconds: the pools' dial timeout (small_profile's), locating included
GENEROUS = 5.0  # seconds an operation may take on a loaded machine; only a hang exceeds it


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet(sentinels=3, replicas=1) as topology:
        yield topology


@contextmanager
def stopped(*servers: RedisServer) -> Iterator[None]:
    """`servers` hung (SIGSTOP) for the block, and running again after it, whatever happens."""
    pids = [server.pid for server in servers]
    assert None not in pids
    try:
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGCONT)


def locator_for(url: str) -> SentinelLocator:
    return SentinelLocator(Topology.from_url(url), timeout=DIAL_TIMEOUT)


async def test_a_hung_first_sentinel_does_not_stop_the_cache(
    sentinels: SentinelSet, key_prefix: str
) -> None:
    primary = sentinels.master_address()
    replica = next(s.address for s in sentinels.servers if s.address != primary)
    locator = locator_for(sentinels.url)
    try:
        with stopped(sentinels.sentinels[0]):  # the one redis-py asked first, every time
            client = CacheClient.create(
                read_url=sentinels.url, profile=small_profile(), key_prefix=key_prefix
            )
            async with client:
                await client.set("k", b"v", timeout=GENEROUS)
                assert await client.get("k", timeout=GENEROUS) == b"v"
                dialled = client.stats()["write"].opened
            # Within the dial timeout that Connector.open gives locating and DNS together.
            async with asyncio.timeout(DIAL_TIMEOUT):
                assert await locator.primary_places() == [primary]
                assert await locator.replica_places() == [replica, primary]
    finally:
        await locator.aclose()
    assert dialled >= 1  # the write pool's connections were located through the Sentinels
    assert locator.stale_answers == 0  # the answers came from the Sentinels still running


async def test_with_every_sentinel_hung_the_last_answer_is_used(
    sentinels: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    primary = sentinels.master_address()
    replica = next(s.address for s in sentinels.servers if s.address != primary)
    locator = locator_for(sentinels.url)
    caplog.set_level(logging.WARNING, logger="postal.cache.sentinel")
    try:
        assert await locator.primary_places() == [primary]
        assert await locator.replica_places() == [replica, primary]
        with stopped(*sentinels.sentinels):
            assert await locator.primary_places() == [primary]
            assert await locator.replica_places() == [replica, primary]
    finally:
        await locator.aclose()
    assert locator.stale_answers == 3  # the primary, then the replicas and the primary
    warnings = [r for r in caplog.records if r.name == "postal.cache.sentinel"]
    assert len(warnings) == 1  # said once, not at every dial
    assert "using the last known primary" in warnings[0].getMessage()


async def test_with_every_sentinel_hung_and_nothing_known_locating_fails(
    sentinels: SentinelSet,
) -> None:
    locator = locator_for(sentinels.url)
    try:
        with stopped(*sentinels.sentinels), pytest.raises(DnsLookupError, match="did not answer"):
            await locator.primary_places()
    finally:
        await locator.aclose()
    assert locator.stale_answers == 0
