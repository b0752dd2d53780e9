"""Redis Cluster beyond the posts API suite (which runs on a cluster too, see conftest): a slot
moved from one master to another while the service is under load, on a cluster of its own.

The slot holding a hot post is migrated key by key with pauses, so reads meet it half-moved:
the value on the target and its generation still on the source (TRYAGAIN: the read falls back
to the database), then both on the target (ASK), then the slot given away (MOVED). No read may
fail, none may be stale, and afterwards the post is served from its new master's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from postal.cache import CacheClient, CacheError, CacheUnavailable, GuardedFill, guarded
from postal_testing.cluster_set import ClusterSet
from postal_testing.redis_servers import free_port
from postal_testing.topologies import ask, poll
from tests.integration.api_support import Api, running_api
from tests.integration.topology_load import create_posts, load_while


def cached_reads(api: Api) -> int:
    """Reads answered by the cache: by Redis, or from memory (the near cache, which stores only
    what a tracked master returned)."""
    near = api.state.near
    return int(api.state.reads.stats().hits + (0 if near is None else near.stats().hits))


@pytest.fixture
def cluster() -> Iterator[ClusterSet]:
    with ClusterSet(masters=3) as topology:
        yield topology


async def test_a_slot_migrated_under_load_fails_no_read(
    database_url: str, clean_database: None, cluster: ClusterSet, key_prefix: str
) -> None:
    async with running_api(database_url, cluster.url, key_prefix) as api:
        cache = api.state.cache
        posts = await create_posts(api, 3)
        for post in posts:  # cached before the move: the keys to migrate exist
            await api.client.get(f"/api/v1/posts/{post}")
        await api.settle()
        hot = posts[0]
        slot = key_slot(f"{key_prefix}post:{{{hot}}}".encode())
        source = cluster.node_for_slot(slot)
        target = next(master for master in cluster.masters() if master is not source)
        moved: list[int] = []

        async def migrate() -> None:
            await asyncio.sleep(0.3)
            keys = await asyncio.to_thread(
                cluster.migrate_slot, slot, target, pause_between_keys=0.3
            )
            moved.append(keys)

        report = await load_while(api, [hot, hot, hot, *posts], migrate, settle=1.0)
        redirections = cache.redirections()
        assert (await api.client.get(f"/api/v1/posts/{hot}")).status_code == 200
        await api.settle()
        target_node = next(
            n for n in cache.nodes("read") if n.name == f"{target.host}:{target.port}"
        )
        target_gets_before = target_node.pool.stats().opened
        hits_before = cached_reads(api)
        assert (await api.client.get(f"/api/v1/posts/{hot}")).status_code == 200
        hits_after = cached_reads(api)

    assert moved[0] >= 1  # the generation at least (a write may have deleted the value)
    assert cluster.node_for_slot(slot) is target
    assert report.reads > 100
    assert report.failed_reads == [], report.failed_reads[:5]
    assert report.stale_reads == [], report.stale_reads[:5]
    assert report.failed_writes == [], report.failed_writes[:5]
    assert redirections["moved"] >= 1
    assert redirections["ask"] >= 1
    assert target_gets_before >= 1
    assert hits_after == hits_before + 1  # served from the new master (or from memory)


async def test_batches_split_by_slot_survive_a_flushed_script_cache_and_a_moving_slot(
    cluster: ClusterSet,
) -> None:
    keys = [guarded("post", str(number)) for number in range(300)]
    async with CacheClient.create(read_url=cluster.url, key_prefix="batch:") as cache:
        generations = await cache.invalidate_many(keys, ["list:{all}:gen"])
        assert all(generation > 1_000_000 for generation in generations)  # created, at random
        for master in cluster.masters():  # NOSCRIPT everywhere: loaded again, once per node
            ask(master.address, "SCRIPT", "FLUSH")
        fills = [
            GuardedFill(key, generation, f"v{i}".encode(), 60.0)
            for i, (key, generation) in enumerate(zip(keys, generations, strict=True))
        ]
        assert await cache.fill_guarded_many(fills) == len(keys)
        # One slot half-moved: its part of the next batch is refused by the pipeline (ASK)
        # and runs again alone, redirected.
        slot = key_slot(cache.key(keys[0].key).encode())
        source = cluster.node_for_slot(slot)
        target = next(master for master in cluster.masters() if master is not source)
        cluster.begin_migration(slot, target)
        assert cluster.move_keys(slot, target) == 3  # the value, its counter, its slot's epoch
        bumped = await cache.invalidate_many(keys, [])
        assert bumped == [generation + 1 for generation in generations]
        asked = cache.redirections()["ask"]
        cluster.finish_migration(slot, target)
        found = [await cache.get_guarded(key) for key in keys]
    assert asked >= 1
    assert [(entry.payload, entry.generation) for entry in found] == [(None, n) for n in bumped]


async def test_a_master_killed_under_load_fails_no_read_and_its_replica_takes_over(
    database_url: str, clean_database: None, key_prefix: str
) -> None:
    """Three masters with a replica each; the master of a hot post's slot is SIGKILLed. Each
    invalidation waited for that master's replica, so the promoted replica serves nothing
    stale; reads fall back to the database until the slot table names it."""
    with ClusterSet(masters=3, replicas_per_master=1) as cluster:
        async with running_api(database_url, cluster.url, key_prefix) as api:
            cache = api.state.cache
            posts = await create_posts(api, 3)
            hot = posts[0]
            slot = key_slot(f"{key_prefix}post:{{{hot}}}".encode())
            victim = cluster.node_for_slot(slot)
            promoted: list[tuple[str, int]] = []

            async def kill_the_master() -> None:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(cluster.kill_master, victim)
                new = await asyncio.to_thread(cluster.wait_for_promotion, victim)
                promoted.append(new.address)

            report = await load_while(api, [hot, hot, *posts], kill_the_master, settle=2.0)
            waits = cache.replica_wait_stats()
            await api.client.get(f"/api/v1/posts/{hot}")
            await api.settle()
            hits_before = cached_reads(api)
            assert (await api.client.get(f"/api/v1/posts/{hot}")).status_code == 200
            hits_after = cached_reads(api)
        owner = cluster.node_for_slot(slot).address
    assert owner == promoted[0] != victim.address
    assert report.reads > 100
    assert report.failed_reads == [], report.failed_reads[:5]
    assert report.stale_reads == [], report.stale_reads[:5]
    assert report.failed_writes == [], report.failed_writes[:5]
    assert waits.confirmed > 0  # invalidations waited for the masters' replicas
    assert hits_after == hits_before + 1  # cached on its new master (or from it in memory)


async def test_writes_to_keys_already_on_a_migration_target_are_asked_for(
    cluster: ClusterSet,
) -> None:
    """ASK: every command of the operation is admitted by the target (ASKING before each), a
    script the target has never seen included (NOSCRIPT, then EVAL, both asked). A multi-key
    script whose keys are not all on the target is refused by Redis (TRYAGAIN) until the
    migration ends: a CacheError, which the Invalidator retries; never anything else."""
    key = guarded("post", "7")
    async with CacheClient.create(read_url=cluster.url, key_prefix="ask:") as cache:
        await cache.invalidate([key])
        generation = (await cache.get_guarded(key)).generation
        assert await cache.fill_guarded(key, generation, b"v1", ttl=60)
        slot = key_slot(cache.key(key.key).encode())
        source = cluster.node_for_slot(slot)
        target = next(master for master in cluster.masters() if master is not source)
        ask(target.address, "SCRIPT", "FLUSH")
        cluster.begin_migration(slot, target)
        assert cluster.move_keys(slot, target) == 3  # the value, its counter, its slot's epoch
        await cache.invalidate([key])  # value and generation both on the target: admitted
        async with cache.pipeline() as pipe:
            pipe.set("x{7}", b"1").get("x{7}")  # x{7} is in post:{7}'s slot
            assert await pipe.execute() == [b"OK", b"1"]
        asked = cache.redirections()["ask"]
        refused = 0
        for _ in range(3):  # the value is deleted now: Redis may say TRYAGAIN
            try:
                await cache.invalidate([key], ["list:{all}:gen"])
            except CacheError:
                refused += 1
        cluster.finish_migration(slot, target)
        await cache.invalidate([key], ["list:{all}:gen"])
        found = await cache.get_guarded(key)
    assert asked >= 2
    assert found.payload is None
    assert found.generation == generation + 5 - refused


async def test_an_unreachable_cluster_is_no_error_at_start_and_closes_cleanly(
    database_url: str, clean_database: None, key_prefix: str
) -> None:
    """The service starts on the database alone; reads answer, writes invalidate later."""
    nowhere = f"redis+cluster://127.0.0.1:{free_port()}"
    async with running_api(database_url, nowhere, key_prefix) as api:
        post = await api.create(title="No cache yet")
        response = await api.client.get(f"/api/v1/posts/{post['id']}")
        assert response.status_code == 200
        assert api.state.invalidator.stats().failed >= 1  # kept, to be retried
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("postal-")]
    assert leftovers == []


async def test_a_closed_cluster_client_leaves_no_task_and_dials_nothing(
    cluster: ClusterSet,
) -> None:
    cache = CacheClient.create(read_url=cluster.url, key_prefix="close:")
    await cache.start()
    await cache.get("warm")
    await cache.aclose()
    opened = [stats.opened for stats in cache.node_stats()]
    await asyncio.sleep(2.5)  # more than two maintenance intervals
    assert [stats.opened for stats in cache.node_stats()] == opened
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("postal-")] == []


async def test_writes_before_the_slot_table_is_known_fail_as_cache_errors() -> None:
    """Not KeyError: the Invalidator keeps what it could not invalidate as pending."""
    nowhere = f"redis+cluster://127.0.0.1:{free_port()}"
    async with CacheClient.create(read_url=nowhere) as cache:
        with pytest.raises(CacheUnavailable):
            await cache.invalidate([guarded("post", "1")], ["list:{all}:gen"])
        with pytest.raises(CacheUnavailable):
            await cache.get("anything")


async def test_a_hung_master_is_routed_around_once_the_cluster_fails_it_over() -> None:
    """SIGSTOP, not SIGKILL: the master neither answers nor closes connections, so no MOVED
    and no refused dial ever arrives. Timeouts and the open breaker make the client read the
    slot table again, and reads are served by the promoted replica."""
    key = guarded("post", "7")
    with ClusterSet(masters=3, replicas_per_master=1) as cluster:
        async with CacheClient.create(read_url=cluster.url, key_prefix="hung:") as cache:
            await cache.invalidate([key])
            slot = key_slot(cache.key(key.key).encode())
            master = cluster.node_for_slot(slot)
            invalidated = int(ask(master.address, "GET", cache.key(key.generation_key)))
            (replica,) = cluster.replicas_of(master)
            assert master.pid is not None
            os.kill(master.pid, signal.SIGSTOP)
            try:
                await asyncio.to_thread(
                    poll,
                    "the replica of the hung master promoted",
                    lambda: ask(replica.address, "ROLE")[0] == "master" or None,
                    30.0,
                )
                served = None
                for _ in range(100):  # the breaker's cooldown, then a refresh: a few seconds
                    with contextlib.suppress(CacheError):
                        served = await cache.get_guarded(key)
                        break
                    await asyncio.sleep(0.1)
            finally:
                os.kill(master.pid, signal.SIGCONT)
            names = [node.name for node in cache.nodes("read")]
    assert served is not None
    assert served.generation == invalidated  # the replica had the bump
    assert f"{replica.host}:{replica.port}" in names
