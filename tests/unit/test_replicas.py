"""The replica wait's arithmetic and ROLE parsing (pure logic; the waits themselves are in
tests/integration/test_replica_wait.py against real servers)."""

from __future__ import annotations

import asyncio

import pytest

from postal.cache.transport.replicas import (
    REPLY_MARGIN,
    SERVER_TICK,
    UNBOUNDED_WAIT,
    ReplicasBehind,
    ReplicaWait,
    replicas_attached,
    wait_milliseconds,
)


@pytest.mark.parametrize("limit", [0.2, 0.5, 1.0, 30.0])
def test_the_wait_and_a_late_tick_fit_in_the_deadline_with_room_for_the_reply(limit: float) -> None:
    waited = wait_milliseconds(limit) / 1000
    assert waited > 0
    assert waited + SERVER_TICK + max(REPLY_MARGIN, limit / 4) <= limit + 0.001


@pytest.mark.parametrize("limit", [0.001, 0.05, 0.1])
def test_a_deadline_too_short_for_a_tick_still_never_asks_wait_to_block_forever(
    limit: float,
) -> None:
    assert wait_milliseconds(limit) == 1  # WAIT 0 would block until every replica answers


def test_no_deadline_waits_a_bounded_time() -> None:
    assert wait_milliseconds(None) == int(UNBOUNDED_WAIT * 1000)


def info(replicas: int, *states: str) -> bytes:
    lines = ["# Replication", "role:master", f"connected_slaves:{replicas}"]
    lines += [f"slave{i}:ip=127.0.0.1,port=1,state={state},offset=0,lag=0" for i, state in
              enumerate(states)]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n").encode()


def test_every_attached_replica_counts_whatever_its_state() -> None:
    # A replica still syncing may already answer reads: it is waited for too.
    assert replicas_attached(info(2, "online", "wait_bgsave")) == 2
    assert replicas_attached(info(0)) == 0
    assert replicas_attached(b"# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n") == 0


async def test_the_count_is_asked_once_per_refresh_and_shared_by_concurrent_callers() -> None:
    asked = 0
    now = 100.0

    async def role() -> bytes:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0)
        return info(1, "online")

    wait = ReplicaWait(role, enabled=True, refresh=1.0, clock=lambda: now)
    assert await asyncio.gather(*(wait.replicas() for _ in range(5))) == [1] * 5
    assert asked == 1
    now += 0.5
    assert await wait.replicas() == 1
    assert asked == 1
    now += 0.6
    assert await wait.replicas() == 1
    assert asked == 2


async def test_a_short_count_raises_and_makes_the_next_call_ask_again() -> None:
    asked = 0

    async def role() -> bytes:
        nonlocal asked
        asked += 1
        return info(2, "online", "online")

    wait = ReplicaWait(role, enabled=True, clock=lambda: 0.0)
    assert await wait.replicas() == 2
    wait.check([2, info(2, "online", "online")], 2, where="x", waited_ms=50)
    with pytest.raises(
        ReplicasBehind, match="1 of 2 replicas confirmed the invalidation within 50 ms"
    ):
        wait.check([1, info(2, "online", "online")], 2, where="x", waited_ms=50)
    await wait.replicas()
    assert asked == 2
    stats = wait.stats()
    assert (stats.confirmed, stats.behind, stats.replicas) == (1, 1, 2)


async def test_a_replica_attached_since_the_count_makes_the_wait_short() -> None:
    """WAIT 1 with two replicas attached may have been answered by the newcomer while the
    one serving reads had not applied the invalidation: behind, counted again."""
    asked = 0

    async def role() -> bytes:
        nonlocal asked
        asked += 1
        return info(1, "online")

    wait = ReplicaWait(role, enabled=True, clock=lambda: 0.0)
    assert await wait.replicas() == 1
    with pytest.raises(ReplicasBehind, match="2 replicas attached, the invalidation waited for 1"):
        wait.check([1, info(2, "online", "wait_bgsave")], 1, where="x", waited_ms=50)
    await wait.replicas()
    assert asked == 2  # the count is asked again at once


async def test_disabled_never_asks() -> None:
    async def role() -> object:
        raise AssertionError("INFO must not be sent")

    assert await ReplicaWait(role, enabled=False).replicas() == 0


async def test_a_count_of_no_replicas_is_asked_again_so_a_returning_replica_is_waited_for() -> None:
    replicas: list[str] = []
    asked = 0

    async def role() -> bytes:
        nonlocal asked
        asked += 1
        return info(len(replicas), *replicas)

    wait = ReplicaWait(role, enabled=True, refresh=1.0, clock=lambda: 0.0)
    assert await wait.replicas() == 0
    replicas.append("wait_bgsave")  # the replica rejoins, still syncing; no time passes
    assert await wait.replicas() == 1
    assert asked == 2
