"""Sentinel URLs on real servers: three Sentinels over a primary and a replica, started for each
test. The primary is killed under load; the Sentinels promote the replica; Postal must fail no
read, serve no stale read, and have the cache back (writes reaching Redis, reads hitting) once
the failover is done. The recovery times are printed (run with -s) for docs/topologies.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from postal.cache import CacheEvent, Outcome
from postal_testing.topologies import SentinelSet
from tests.integration.api_support import running_api
from tests.integration.topology_load import create_posts, load_while


def answered(event: CacheEvent) -> bool:
    return event.outcome in (Outcome.OK, Outcome.HIT, Outcome.MISS)


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet(sentinels=3, replicas=1) as topology:
        yield topology


@pytest.mark.parametrize("reads", ["primary", "replicas"])
async def test_the_primary_killed_under_load_fails_no_read_and_the_cache_comes_back(
    database_url: str, clean_database: None, sentinels: SentinelSet, key_prefix: str, reads: str
) -> None:
    read_url = sentinels.url + ("?role=replica" if reads == "replicas" else "")
    events: list[tuple[float, CacheEvent]] = []
    async with running_api(
        database_url, read_url, key_prefix, WRITE_REDIS_URL=sentinels.url
    ) as api:
        cache = api.state.cache
        cache.subscribe(lambda event: events.append((time.monotonic(), event)))
        posts = await create_posts(api, 5)
        old = sentinels.master_address()
        failover: dict[str, float] = {}

        async def kill_the_primary() -> None:
            await asyncio.sleep(0.5)
            failover["killed"] = time.monotonic()
            await asyncio.to_thread(sentinels.kill_primary)
            new = await asyncio.to_thread(sentinels.wait_for_failover, old)
            failover["promoted"] = time.monotonic()
            failover["new_port"] = new[1]

        report = await load_while(api, posts, kill_the_primary, settle=3.0)
        waits = cache.replica_wait.stats()

    killed = failover["killed"]
    assert report.reads > 100
    assert report.failed_reads == [], report.failed_reads[:5]
    assert report.stale_reads == [], report.stale_reads[:5]
    assert report.failed_writes == [], report.failed_writes[:5]  # the database took them all
    assert failover["new_port"] != old[1]
    assert waits.confirmed > 0  # invalidations waited for the replica before the failover

    def first_after(role: str, outcomes: set[Outcome]) -> float | None:
        return next(
            (at for at, e in events if at > killed and e.role == role and e.outcome in outcomes),
            None,
        )

    failed = first_after("write", {Outcome.CONNECTION_ERROR, Outcome.TIMEOUT, Outcome.ERROR})
    assert failed is not None  # the kill did reach the writers
    last_failure = max(at for at, e in events if e.role == "write" and not answered(e))
    written = next(
        (at for at, e in events if at > last_failure and e.role == "write" and answered(e)), None
    )
    hit = next(
        (at for at, e in events if at > failover["promoted"] and e.outcome is Outcome.HIT), None
    )
    assert written is not None, "no invalidation or fill reached the new primary"
    assert hit is not None, "no read was served from Redis after the failover"
    print(
        f"\nsentinel failover ({reads} reads): promoted after"
        f" {failover['promoted'] - killed:.2f} s; cache writes back after"
        f" {written - killed:.2f} s; longest gap between database writes"
        f" {report.longest_write_gap():.2f} s; {report.reads} reads, {report.writes} writes"
    )
