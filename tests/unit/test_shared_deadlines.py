"""SharedDeadlines: blocks under a deadline, one timer for all of them; as asyncio.timeout_at
behaves, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from postal.cache.transport.shared_deadlines import SharedDeadlines
from tests.support.loop import ON_EACH_LOOP, MakeLoop

# A deadline for blocks that must end in time: far above any stall the suite's process may
# take (a full collection of a large heap, a descheduled moment on a loaded machine).
ROOMY = 0.5


def run(make_loop: MakeLoop, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = make_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def sleep_under(deadlines: SharedDeadlines, limit: float, sleep: float) -> float:
    """Sleep `sleep` s in a block of `limit` s; how long the block lasted (TimeoutError out)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with deadlines.bound(started + limit):
        await asyncio.sleep(sleep)
    return loop.time() - started


@ON_EACH_LOOP
def test_a_block_past_its_deadline_raises_timeout_error_and_the_task_goes_on(
    make_loop: MakeLoop,
) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await sleep_under(deadlines, 0.05, 5.0)
        assert 0.04 <= loop.time() - started < 1.0
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # the cancellation was taken back
        await asyncio.sleep(0)  # and the task is not cancelled at its next await

    run(make_loop, main)


@ON_EACH_LOOP
def test_a_block_that_ends_in_time_is_not_cancelled_and_is_dropped(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        for _ in range(1000):
            await sleep_under(deadlines, ROOMY, 0)
        assert len(deadlines) <= 1  # each ended one left as the next came in
        await asyncio.sleep(ROOMY + 0.1)  # the timer fires for the last: nothing to cancel
        assert len(deadlines) == 0

    run(make_loop, main)


@ON_EACH_LOOP
def test_a_block_with_a_long_deadline_still_running_holds_no_ended_one(
    make_loop: MakeLoop,
) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        async def long() -> None:  # a bulk import's batch, say
            async with deadlines.bound(loop.time() + 60.0):
                await done.wait()

        task = asyncio.create_task(long())
        await asyncio.sleep(0)
        most = 0
        for _ in range(5000):
            await sleep_under(deadlines, ROOMY, 0)
            most = max(most, len(deadlines))
        assert not task.done()
        assert most <= 2  # the long one and the last short one
        done.set()
        await task

    run(make_loop, main)


@ON_EACH_LOOP
def test_a_deadline_earlier_than_the_armed_one_expires_on_time(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        loop = asyncio.get_running_loop()
        late = asyncio.create_task(sleep_under(deadlines, 5.0, 0.3))  # arms the timer at 5 s
        await asyncio.sleep(0)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await sleep_under(deadlines, 0.05, 5.0)
        assert loop.time() - started < 1.0
        assert await late < 5.0  # the later block was left alone and ended by itself

    run(make_loop, main)


@ON_EACH_LOOP
def test_many_blocks_expire_each_at_its_own_deadline(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        limits = [0.15, 0.05, 0.1, 0.05, 0.2]
        results = await asyncio.gather(
            *(sleep_under(deadlines, limit, 5.0) for limit in limits), return_exceptions=True
        )
        assert all(isinstance(result, TimeoutError) for result in results)
        quick = await asyncio.gather(
            *(sleep_under(deadlines, ROOMY + limit, 0.01) for limit in limits),
            return_exceptions=True,
        )
        assert all(isinstance(result, float) for result in quick)

    run(make_loop, main)


@ON_EACH_LOOP
def test_a_cancellation_from_outside_stays_a_cancellation(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        task = asyncio.create_task(sleep_under(deadlines, 5.0, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(make_loop, main)


@ON_EACH_LOOP
def test_cancelled_from_outside_as_the_deadline_passes_stays_a_cancellation(
    make_loop: MakeLoop,
) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.02
        caught: list[BaseException] = []

        async def blocked() -> None:
            try:
                async with deadlines.bound(deadline):
                    await asyncio.sleep(5.0)
            except BaseException as exc:
                caught.append(exc)
                raise

        task = asyncio.create_task(blocked())
        await asyncio.sleep(0)
        # The same `when` as the deadline's timer: both loops run every timer due in one pass,
        # so the cancellation lands in the turn the deadline expires the task, before the task
        # runs again. (A `when` read from the clock later may fall a millisecond after, in a
        # later pass, where the task has already left with its TimeoutError.)
        loop.call_at(deadline, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(caught) == 1
        assert type(caught[0]) is asyncio.CancelledError

    run(make_loop, main)


@ON_EACH_LOOP
def test_a_deadline_already_past_expires_at_the_first_await(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with deadlines.bound(loop.time() - 1.0):
                await asyncio.sleep(5.0)

    run(make_loop, main)


@ON_EACH_LOOP
def test_no_deadline_never_expires_and_holds_nothing(make_loop: MakeLoop) -> None:
    async def main() -> None:
        deadlines = SharedDeadlines()
        async with deadlines.bound(None):
            assert len(deadlines) == 0
            await asyncio.sleep(0.05)

    run(make_loop, main)


def test_one_instance_serves_a_later_loop_afresh() -> None:
    deadlines = SharedDeadlines()

    async def expires() -> None:
        with pytest.raises(TimeoutError):
            await sleep_under(deadlines, 0.02, 5.0)

    async def left_pending() -> None:
        loop = asyncio.get_running_loop()
        async with deadlines.bound(loop.time() + 60.0):
            await asyncio.sleep(0)
        asyncio.get_running_loop().stop()  # a timer left armed on a loop that stops

    first = asyncio.new_event_loop()
    try:
        task = first.create_task(left_pending())
        first.run_forever()
        assert task.done()
    finally:
        first.close()
    run(uvloop.new_event_loop, expires)
    run(asyncio.new_event_loop, expires)


def test_a_block_needs_a_task() -> None:
    deadlines = SharedDeadlines()
    errors: list[BaseException] = []
    loop = asyncio.new_event_loop()

    def outside_any_task() -> None:  # a loop callback: a running loop, no task
        coroutine = deadlines.bound(None).__aenter__()
        try:
            coroutine.send(None)
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    try:
        loop.call_soon(outside_any_task)
        loop.run_forever()
    finally:
        loop.close()
    assert len(errors) == 1
    assert "task" in str(errors[0])
