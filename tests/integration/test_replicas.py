"""Reads spread over several replicas (a comma-separated READ_REDIS_URL), on real servers: a
primary and two replicas, started for each test.

- reads go to both replicas, and writes are invalidated on both before they return;
- a replica killed mid-load: no read fails (reads leave it once the primary stops listing it
  online, and fall back to the database until then), none is stale, and it is read from again
  once it has re-synced: the check that caught reads of a just re-synced replica's old values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from postal_testing.redis_servers import RedisServer
from postal_testing.topologies import ReplicaSet
from tests.integration.api_support import running_api
from tests.integration.topology_load import create_posts, load_while


@pytest.fixture
def replica_set() -> Iterator[ReplicaSet]:
    with ReplicaSet(replicas=2) as topology:
        yield topology


def get_calls(server: RedisServer) -> int:
    """GET and MGET calls the server has answered (INFO commandstats)."""
    calls = 0
    for line in server.info(b"commandstats").decode().splitlines():
        if line.startswith(("cmdstat_get:", "cmdstat_mget:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


async def test_reads_spread_over_the_replicas_and_none_is_stale(
    database_url: str, clean_database: None, replica_set: ReplicaSet, key_prefix: str
) -> None:
    before = [get_calls(replica) for replica in replica_set.replicas]
    async with running_api(
        database_url, replica_set.read_url, key_prefix, WRITE_REDIS_URL=replica_set.write_url
    ) as api:
        assert [node.name for node in api.state.cache.nodes("read")] == [
            f"{r.host}:{r.port}" for r in replica_set.replicas
        ]
        posts = await create_posts(api, 5)

        async def nothing_happens() -> None:
            await asyncio.sleep(1.5)

        report = await load_while(api, posts, nothing_happens, settle=0.0)
        waits = api.state.cache.replica_wait.stats()
    after = [get_calls(replica) for replica in replica_set.replicas]
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert all(count > 0 for count in served), served
    assert report.reads > 100
    assert report.writes > 10
    assert report.failed_reads == []
    assert report.failed_writes == []
    assert report.stale_reads == []
    assert waits.replicas == 2
    # Each invalidation waited for both; one a replica did not confirm in time (the 50 ms
    # WAIT of a loaded machine) was retried, and its post read from the database meanwhile.
    assert waits.confirmed > 0
    assert waits.skipped == 0


async def test_a_replica_killed_mid_load_fails_no_read(
    database_url: str, clean_database: None, replica_set: ReplicaSet, key_prefix: str
) -> None:
    victim = replica_set.replicas[0]
    async with running_api(
        database_url, replica_set.read_url, key_prefix, WRITE_REDIS_URL=replica_set.write_url
    ) as api:
        posts = await create_posts(api, 5)
        cache = api.state.cache
        victim_node, survivor_node = cache.nodes("read")
        listed: dict[str, frozenset[tuple[str, int]] | None] = {}

        async def kill_then_restart() -> None:
            await asyncio.sleep(0.5)
            listed["before"] = cache.replica_wait.online()
            await asyncio.to_thread(victim.kill)
            await asyncio.sleep(2.0)  # the primary notices; a new INFO answer says so
            listed["killed"] = cache.replica_wait.online()
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(victim.replicate, replica_set.primary)

        report = await load_while(api, posts, kill_then_restart, settle=2.5)
        served_by_victim_after = victim_node.pool.stats().opened
    assert report.reads > 100
    assert report.failed_reads == [], report.failed_reads[:5]
    assert report.stale_reads == [], report.stale_reads[:5]
    assert report.failed_writes == [], report.failed_writes[:5]
    assert survivor_node.breaker is not None
    assert survivor_node.breaker.stats().opened == 0
    # Reads left the victim because the primary stopped listing it as online (not by luck).
    assert listed["before"] == {victim.address, replica_set.replicas[1].address}
    assert listed["killed"] == {replica_set.replicas[1].address}
    assert served_by_victim_after > 0
    assert get_calls(victim) > 0  # the restarted replica is read from again
