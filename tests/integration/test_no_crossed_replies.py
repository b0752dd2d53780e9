"""A connection with a reply still pending is never handed to another caller.

redis-py's CVE-2023-28858 was exactly that: a command cancelled after it was sent left its reply on
the connection, and the next user of the connection read it as its own. Here many tasks share a
small pool, with random deadlines (many of them expire mid-flight), random keys and random values
of random sizes (so replies span several socket reads); every GET that succeeds must return its
own key's value.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import redis.asyncio as redis

from postal.cache import CacheError, CacheTimeout
from tests.integration.helpers import eventually, make_client, small_profile

KEYS = 200
TASKS = 100
OPS_PER_TASK = 60


async def test_every_successful_get_returns_its_own_keys_value(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    rng = random.Random(28858)
    expected = {
        f"k{i}": f"value-of-k{i}:".encode() + rng.randbytes(rng.choice([8, 512, 20_000, 200_000]))
        for i in range(KEYS)
    }
    # No breaker: the deadlines here expire on purpose, hundreds of times, and every operation
    # must reach the wire for the test to mean anything.
    profile = replace(small_profile(max_size=8, min_idle=4, max_idle=8), breaker=None)
    client = make_client(redis_url, key_prefix, profile)
    await client.start()
    async with client.pipeline() as pipe:
        for key, value in expected.items():
            pipe.set(key, value, ttl=300)
        await pipe.execute(timeout=30)
    outcomes = {"ok": 0, "timeout": 0, "other": 0}
    wrong: list[str] = []

    async def worker(seed: int) -> None:
        task_rng = random.Random(seed)
        for _ in range(OPS_PER_TASK):
            key = task_rng.choice(list(expected))
            deadline = task_rng.choice([0.0001, 0.0005, 0.001, 0.003, 0.01, 0.1])
            try:
                if task_rng.random() < 0.2:
                    other = task_rng.choice(list(expected))
                    values = await client.mget([key, other], timeout=deadline)
                    if values != [expected[key], expected[other]]:
                        wrong.append(f"MGET {key},{other}")
                else:
                    value = await client.get(key, timeout=deadline)
                    if value != expected[key]:
                        wrong.append(f"GET {key}")
                outcomes["ok"] += 1
            except CacheTimeout:
                outcomes["timeout"] += 1
            except CacheError:
                outcomes["other"] += 1

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(worker(seed) for seed in range(TASKS)))
        assert wrong == [], f"{len(wrong)} replies went to the wrong caller: {wrong[:5]}"
        # The test means something only if both happened, many times.
        assert outcomes["ok"] > 500, outcomes
        assert outcomes["timeout"] > 500, outcomes
        assert outcomes["other"] == 0, outcomes
        pool = client.pool("read")
        await eventually(lambda: pool.stats().in_use == 0 and pool.stats().opening == 0)
        assert pool.stats().total <= 8
    finally:
        await client.aclose()
