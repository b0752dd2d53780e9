"""Which replicas reads may use (`ReplicaWait.online`) when the primary's INFO replication
answers, fails, is slow, or is not asked for a while: pure logic, with a fake clock and a fake
INFO (the real servers are in tests/integration/test_replicas.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from postal.cache.transport.replicas import STALE_AFTER, ReplicaWait
from tests.support.clock import SetClock

REFRESH = 1.0
A = ("127.0.0.1", 7001)
B = ("127.0.0.1", 7002)


def info(*online: tuple[str, int]) -> bytes:
    lines = ["# Replication", "role:master", f"connected_slaves:{len(online)}"]
    lines += [
        f"slave{i}:ip={ip},port={port},state=online,offset=0,lag=0"
        for i, (ip, port) in enumerate(online)
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


class FakePrimary:
    """INFO replication that answers with `online`, fails with `error`, or hangs while `busy`
    (a Lua script holding the primary); counts the questions."""

    def __init__(self) -> None:
        self.online: tuple[tuple[str, int], ...] = (A, B)
        self.error: Exception | None = None
        self.busy = False
        self.asked = 0
        self._released = asyncio.Event()

    async def info(self) -> bytes:
        self.asked += 1
        if self.busy:
            await self._released.wait()
        if self.error is not None:
            raise self.error
        return info(*self.online)

    def release(self) -> None:
        self.busy = False
        self._released.set()


@pytest.fixture
def primary() -> FakePrimary:
    return FakePrimary()


@pytest.fixture
def clock() -> SetClock:
    return SetClock(100.0)


@pytest.fixture
async def wait(primary: FakePrimary, clock: SetClock) -> AsyncIterator[ReplicaWait]:
    replica_wait = ReplicaWait(primary.info, enabled=True, refresh=REFRESH, clock=clock)
    yield replica_wait
    replica_wait.close()


async def answered() -> None:
    """Let a question started by `online()` run to its end (the fake INFO never sleeps)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_before_any_answer_every_replica_may_serve(
    wait: ReplicaWait, primary: FakePrimary
) -> None:
    assert wait.online() is None
    await answered()
    assert primary.asked == 1  # the question was on its way


async def test_while_the_first_question_keeps_failing_every_replica_may_serve(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    primary.error = ConnectionError("refused")
    for _ in range(4):
        assert wait.online() is None
        await answered()
        clock.now += REFRESH
    assert primary.asked == 4


async def test_the_first_answer_counts_its_replicas_as_settled(
    wait: ReplicaWait, primary: FakePrimary
) -> None:
    wait.online()
    await answered()
    assert wait.online() == frozenset({A, B})


async def test_a_failed_question_keeps_the_last_answer_while_it_is_recent(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    primary.error = ConnectionError("reset")
    clock.now += REFRESH
    wait.online()  # asks, and fails
    await answered()
    assert primary.asked == 2
    assert wait.online() == frozenset({A, B})  # not None: that would let every replica serve
    clock.now += REFRESH * STALE_AFTER - REFRESH
    assert wait.online() == frozenset({A, B})  # exactly STALE_AFTER refreshes old: still believed


async def test_a_failed_question_is_not_asked_again_before_a_refresh(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    primary.error = ConnectionError("refused")
    wait.online()
    await answered()
    clock.now += REFRESH / 2
    wait.online()
    await answered()
    assert primary.asked == 1
    clock.now += REFRESH / 2
    wait.online()
    await answered()
    assert primary.asked == 2


async def test_questions_failing_past_the_trusted_age_fail_closed(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    primary.error = ConnectionError("reset")
    for _ in range(STALE_AFTER):
        clock.now += REFRESH
        wait.online()
        await answered()
    clock.now += 0.01
    assert wait.online() == frozenset()  # reads go to the database
    clock.now += 10 * REFRESH
    assert wait.online() == frozenset()  # however long it lasts


async def test_a_question_hanging_past_the_trusted_age_fails_closed(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    # The reviewer's case: a busy Lua script holds INFO; the last answer must not serve on.
    wait.online()
    await answered()
    primary.busy = True
    clock.now += REFRESH
    assert wait.online() == frozenset({A, B})
    await answered()
    clock.now += REFRESH + 0.01
    assert wait.online() == frozenset()
    assert primary.asked == 2  # one question, still running: not asked again meanwhile


async def test_an_answer_after_a_failure_does_not_settle_replicas_at_once(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    primary.error = ConnectionError("reset")
    clock.now += STALE_AFTER * REFRESH + 0.01
    wait.online()
    await answered()
    primary.error = None
    clock.now += REFRESH
    assert wait.online() == frozenset()  # asks
    await answered()
    # A replica may have been cut off and re-synced while nobody could see: each waits a
    # refresh from this answer, as a new one would.
    assert wait.online() == frozenset()
    clock.now += REFRESH / 2
    assert wait.online() == frozenset()
    clock.now += REFRESH / 2
    assert wait.online() == frozenset({A, B})


async def test_after_a_quiet_spell_the_old_answer_is_not_served(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    clock.now += 60.0  # no read asked for a minute
    assert wait.online() == frozenset()
    await answered()
    assert primary.asked == 2  # that read started a new question
    assert wait.online() == frozenset()  # the gap: settled only a refresh from now
    clock.now += REFRESH
    assert wait.online() == frozenset({A, B})


async def test_a_replica_that_joins_later_waits_a_refresh(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    primary.online = (A,)
    wait.online()
    await answered()
    primary.online = (A, B)
    clock.now += REFRESH
    assert wait.online() == frozenset({A})
    await answered()
    clock.now += REFRESH / 2
    assert wait.online() == frozenset({A})
    clock.now += REFRESH / 2
    assert wait.online() == frozenset({A, B})


async def test_a_replica_no_longer_listed_stops_serving_at_the_next_answer(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    primary.online = (B,)  # A cut off from the primary
    clock.now += REFRESH
    wait.online()
    await answered()
    assert wait.online() == frozenset({B})


async def test_a_slow_answer_within_the_trusted_age_keeps_replicas_settled(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    primary.busy = True
    clock.now += REFRESH
    wait.online()
    await answered()
    clock.now += REFRESH * (STALE_AFTER - 1)
    primary.release()
    await answered()
    assert wait.online() == frozenset({A, B})  # the answers were never more than STALE_AFTER apart


async def test_a_lost_replica_is_unfit_until_an_answer_asked_after_the_loss_settles_it(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    asked = primary.asked
    clock.now += REFRESH / 4  # the last answer is recent: it would vouch for A on its own
    wait.lost([A])  # e.g. A restarted, loaded old data, and is answering again
    assert wait.online() == frozenset({B})
    await answered()
    assert primary.asked == asked + 1  # asked at once, not a refresh later
    # The answer lists A online again (it re-synced quickly): new from now, so a refresh more.
    assert wait.online() == frozenset({B})
    clock.now += REFRESH
    assert wait.online() == frozenset({A, B})


async def test_an_answer_asked_before_the_loss_does_not_vouch_for_the_lost_replica(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    clock.now += REFRESH
    primary.busy = True
    wait.online()  # a question on its way, asked before the loss
    await answered()
    clock.now += 0.1
    wait.lost([A])
    primary.release()  # its answer, listing A, arrives after the loss
    await answered()
    clock.now += 2 * REFRESH
    assert A not in (wait.online() or frozenset())
    await answered()  # the next question, asked after the loss, lists A: new from its answer
    assert wait.online() == frozenset({B})
    clock.now += REFRESH
    assert wait.online() == frozenset({A, B})


async def test_a_lost_replica_the_primary_no_longer_lists_stays_unfit(
    wait: ReplicaWait, primary: FakePrimary, clock: SetClock
) -> None:
    wait.online()
    await answered()
    wait.lost([A])
    primary.online = (B,)  # restarted and not re-attached yet
    await answered()
    for _ in range(3):
        clock.now += REFRESH
        assert wait.online() == frozenset({B})
        await answered()
