"""ManagedPool against a real Redis: warm start, idle limits, reaping, lifetime, fairness, stats."""

from __future__ import annotations

import asyncio
import re
import statistics
import time

import pytest
import redis.asyncio as redis

from postal.cache import CacheClient, CloseReason
from postal_testing.redis_servers import running_redis
from tests.integration.helpers import eventually, make_client, pooled_profile


async def client_names(raw_redis: redis.Redis) -> list[dict[str, str]]:
    clients: list[dict[str, str]] = await raw_redis.client_list()
    return clients


async def test_min_idle_connections_are_open_and_initialised_at_start(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    before = {c["id"] for c in await client_names(raw_redis)}
    async with make_client(redis_url, key_prefix, pooled_profile(min_idle=4)) as client:
        stats = client.stats()
        assert (stats["read"].idle, stats["read"].opened, stats["read"].in_use) == (4, 4, 0)
        assert (stats["write"].idle, stats["write"].opened) == (1, 1)
        new = [c for c in await client_names(raw_redis) if c["id"] not in before]
        ours = [c for c in new if c["name"] in ("postal-read", "postal-write")]
        assert sorted(c["name"] for c in ours) == ["postal-read"] * 4 + ["postal-write"]
        # HELLO 3 was done on each: the server reports RESP3 for every one of them.
        assert {c["resp"] for c in ours} == {"3"}


async def test_min_idle_is_refilled_in_the_background(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    async with make_client(
        redis_url, key_prefix, pooled_profile(min_idle=3, idle_time=0.1)
    ) as client:
        pool = client.pool("read")
        await eventually(lambda: pool.stats().closed.get(CloseReason.IDLE_TIME, 0) >= 3)
        await eventually(lambda: pool.stats().idle == 3)
        assert pool.stats().opened >= 6


async def test_with_no_grace_max_idle_is_enforced_on_release(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = pooled_profile(max_size=10, max_idle=3, max_idle_grace=0.0)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = [await pool.get_connection() for _ in range(8)]
        assert pool.stats().in_use == 8
        for connection in held:
            await pool.release(connection)
        stats = pool.stats()
        assert (stats.in_use, stats.idle) == (0, 3)
        assert stats.closed[CloseReason.MAX_IDLE] == 5


async def test_surplus_idle_connections_are_closed_after_the_grace_not_at_once(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = pooled_profile(max_size=10, max_idle=3, max_idle_grace=0.3)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = [await pool.get_connection() for _ in range(8)]
        for connection in held:
            await pool.release(connection)
        assert (pool.stats().idle, pool.stats().closed.get(CloseReason.MAX_IDLE, 0)) == (8, 0)
        again = [await pool.get_connection() for _ in range(8)]  # a second burst: no dial
        assert pool.stats().opened == 8
        for connection in again:
            await pool.release(connection)
        await eventually(lambda: pool.stats().idle == 3)
        assert pool.stats().closed[CloseReason.MAX_IDLE] == 5


async def test_idle_time_is_enforced_by_the_reaper(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = pooled_profile(min_idle=0, max_idle=5, idle_time=0.1)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = [await pool.get_connection() for _ in range(4)]
        for connection in held:
            await pool.release(connection)
        assert pool.stats().idle == 4
        await eventually(lambda: pool.stats().idle == 0)
        assert pool.stats().closed[CloseReason.IDLE_TIME] == 4


async def test_lifetime_never_closes_a_connection_in_use(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = pooled_profile(min_idle=1, max_idle=2, max_lifetime=0.1, lifetime_jitter=0.0)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        connection = await pool.get_connection()
        await asyncio.sleep(0.3)  # well past its lifetime, with the reaper running
        assert connection.is_connected
        await connection.send_command("PING")
        assert await connection.read_response() == b"PONG"
        await pool.release(connection)  # retired now, on its way back
        await eventually(lambda: not connection.is_connected)
        stats = pool.stats()
        assert stats.closed[CloseReason.LIFETIME] >= 1
        assert stats.in_use == 0
        await eventually(lambda: pool.stats().idle >= 1)


async def test_an_expired_idle_connection_is_not_handed_out(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    # A long maintenance interval: only the check at checkout can catch the expiry.
    profile = pooled_profile(
        min_idle=1, max_idle=1, max_lifetime=0.05, lifetime_jitter=0.0, maintenance_interval=60.0
    )
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        first = await pool.get_connection()
        await pool.release(first)
        await asyncio.sleep(0.1)
        second = await pool.get_connection()
        assert second is not first
        assert pool.stats().closed[CloseReason.LIFETIME] >= 1
        await pool.release(second)


async def test_lifetimes_are_jittered(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    profile = pooled_profile(min_idle=5, max_idle=5, max_lifetime=100.0, lifetime_jitter=0.1)
    async with make_client(redis_url, key_prefix, profile) as client:
        pool = client.pool("read")
        held = [await pool.get_connection() for _ in range(5)]
        lifetimes = [c.retire_at - c.opened_at for c in held if c.retire_at is not None]
        assert len(lifetimes) == 5
        assert all(90.0 <= lifetime <= 100.0 for lifetime in lifetimes)
        assert len({round(lifetime, 6) for lifetime in lifetimes}) > 1
        for connection in held:
            await pool.release(connection)


async def test_the_pool_is_fair_under_contention(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    """100 tasks on 10 connections for 2 s: every task gets its turn (FIFO hand-off).

    Fairness is judged by counts, not by wait times: on two shared cores a single stall of the
    event loop makes any one wait long, whatever the pool does."""
    profile = pooled_profile(max_size=10, min_idle=10, max_idle=10, pool_timeout=4.0)
    client = make_client(redis_url, key_prefix, profile)
    await client.start()
    await client.set("fair", b"x" * 1024)
    done_by_task = [0] * 100
    stop_at = time.perf_counter() + 2.0

    async def worker(index: int) -> None:
        while time.perf_counter() < stop_at:
            await client.get("fair", timeout=None)
            done_by_task[index] += 1

    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(worker(i) for i in range(100)))
    finally:
        await client.aclose()
    mean_done = statistics.fmean(done_by_task)
    assert min(done_by_task) > 0, "a task never got a connection"
    # FIFO hand-off: every task gets about the same number of turns (a LIFO or random
    # hand-off starves some tasks while others loop).
    assert min(done_by_task) >= 0.5 * mean_done, done_by_task
    assert max(done_by_task) <= 1.5 * mean_done, done_by_task


async def test_stats_and_repr_show_the_pool_state(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    async with make_client(
        redis_url, key_prefix, pooled_profile(max_size=4, min_idle=2, max_idle=3)
    ) as client:
        pool = client.pool("read")
        held = await pool.get_connection()
        stats = pool.stats()
        assert (stats.in_use, stats.idle, stats.total, stats.max_size) == (1, 1, 2, 4)
        text = repr(pool)
        assert re.match(r"<ManagedPool read 127\.0\.0\.1:\d+ \[", text), text
        assert "in use 1, idle 1, opening 0, total 2/4" in text
        assert "opened 2" in text
        await pool.release(held)


async def test_close_fails_waiters_and_closes_everything(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    client = make_client(redis_url, key_prefix, pooled_profile(max_size=1, min_idle=1, max_idle=1))
    await client.start()
    pool = client.pool("read")
    held = await pool.get_connection()
    waiter = asyncio.ensure_future(client.get("k", timeout=None))
    await asyncio.sleep(0.01)
    assert pool.stats().waiting == 1
    await client.aclose()
    with pytest.raises(Exception, match="pool closed"):
        await waiter
    await pool.release(held)
    stats = pool.stats()
    assert (stats.in_use, stats.idle) == (0, 0)
    assert stats.closed[CloseReason.SHUTDOWN] == 1
    await eventually(lambda: not held.is_connected)


async def test_start_does_not_fail_when_redis_is_down(key_prefix: str) -> None:
    async with CacheClient.create(
        read_url="redis://127.0.0.1:1/0", profile=pooled_profile(), key_prefix=key_prefix
    ) as client:
        assert client.stats()["read"].total == 0


async def test_an_idle_connection_closed_by_the_server_is_not_handed_out(key_prefix: str) -> None:
    # A server of its own: the test kills every connection named postal-read on it.
    with running_redis() as server:
        client = make_client(server.url, key_prefix, pooled_profile(min_idle=3, max_idle=3))
        await client.start()
        admin = redis.Redis.from_url(server.url)
        try:
            killed = await admin.client_kill_filter(skipme=True)
            assert killed == 4  # three read connections and one write
            await asyncio.sleep(0.05)  # let the event loop see the EOFs
            assert await client.get("k") is None  # no failure: dead idle connections skipped
            assert client.pool("read").stats().closed[CloseReason.ERROR] == 3
        finally:
            await admin.aclose()
            await client.aclose()
