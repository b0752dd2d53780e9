"""A replica that restarts faster than the primary is asked about it serves nothing it loaded.

A replica restarted (a crash and a supervisor, a rescheduled pod) loads its data set from disk,
and serves it while it re-syncs, or as a primary of its own until it is told to replicate:
values whose invalidations it never received. The primary's INFO replication, asked once a
second, may not have seen it gone. So a lost connection to a replica makes it unfit for reads
until the primary lists it again, in an answer asked after the loss (`ReplicaWait.lost`).

Real servers: a primary and a replica whose `dump.rdb` holds an old value. The replica is
killed and started again at once, so the last answer still lists it as online; it then holds
the old value, and every read of the key must give the new one or fail over (to the database,
in the service), never the old one. Through the pool and through the read pipeline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import redis.asyncio as redis

from postal.cache import CacheClient, CacheError, CacheTimeouts, PipelineConfig
from postal_testing.redis_servers import RedisServer
from tests.integration.helpers import eventually, small_profile

pytestmark = pytest.mark.redis_server

KEY = "post"
OLD, NEW = b"old", b"new"
WATCHED = 1.0  # seconds of reads after the restart: the last answer's age is below a refresh


async def put_old_on_disk_and_new_in_memory(
    primary: RedisServer, replica: RedisServer, key: str
) -> None:
    async with redis.Redis.from_url(primary.url) as raw_primary:
        await raw_primary.set(key, OLD)
        assert await raw_primary.wait(1, 2000) == 1
        async with redis.Redis.from_url(replica.url) as raw_replica:
            await raw_replica.save()  # the replica's dump.rdb: the old value
        await raw_primary.set(key, NEW)
        assert await raw_primary.wait(1, 2000) == 1


@pytest.mark.parametrize("pipelined", [False, True], ids=["pool", "read-pipeline"])
async def test_a_replica_restarted_with_old_data_serves_none_of_it(
    two_servers: tuple[RedisServer, RedisServer], key_prefix: str, pipelined: bool
) -> None:
    primary, replica = two_servers
    await asyncio.to_thread(replica.replicate, primary)
    await put_old_on_disk_and_new_in_memory(primary, replica, key_prefix + KEY)
    profile = replace(
        small_profile(),
        timeouts=CacheTimeouts(get=0.5, set=1.0),
        read_pipeline=PipelineConfig() if pipelined else None,
    )
    client = CacheClient.create(
        read_url=replica.url, write_url=primary.url, profile=profile, key_prefix=key_prefix
    )
    async with client:
        await eventually(lambda: client.replica_wait.online() == {replica.address})
        assert await client.get(KEY) == NEW  # served by the replica

        await asyncio.to_thread(replica.kill)
        await asyncio.to_thread(replica.start)  # loads dump.rdb; a primary of its own now
        async with redis.Redis.from_url(replica.url) as raw_replica:
            assert await raw_replica.get(key_prefix + KEY) == OLD  # what it would serve

        answers: list[bytes | None] = []
        failed = 0
        watch_until = time.monotonic() + WATCHED
        while time.monotonic() < watch_until:
            try:
                answers.append(await client.get(KEY))
            except CacheError:
                failed += 1  # the service reads the database instead
            await asyncio.sleep(0.005)
        assert OLD not in answers
        assert failed > 0  # the restarted replica was refused, not merely lucky

        # Attached again and synced, it is read from again once the primary has listed it
        # online for a refresh.
        await asyncio.to_thread(replica.replicate, primary)
        await eventually(lambda: client.replica_wait.online() == {replica.address}, timeout=10)
        assert await client.get(KEY) == NEW
