"""The loop-turn budget (`api/turn_budget.py`) on a real event loop, with a clock the test sets:
which requests start in this turn, which in the next, in what order, and behind what."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from postal.api.turn_budget import TurnBudget
from tests.support.clock import SetClock
from tests.support.loop import ON_EACH_LOOP, MakeLoop

BUDGET = 0.25  # s, exact in binary: sums of its halves and quarters compare exactly


class Turns:
    """The event loop's turns since `start()`: a callback that runs once a turn, counting."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)


async def test_within_the_budget_requests_start_at_once() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    assert await budget.wait() is False  # the turn's first: the budget starts now
    clock.now += BUDGET / 2
    assert await budget.wait() is False
    clock.now += BUDGET / 2
    assert await budget.wait() is False  # at the budget exactly: still this turn


async def test_past_the_budget_a_request_starts_in_the_next_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The release timer runs on the loop's real clock: a stall of its millisecond would let it
    # release the request later in the next turn, behind the turn counter's own callback.
    # Held off, so the turn's first callback releases, as it does in a turn without a stall.
    monkeypatch.setattr("postal.api.turn_budget.RELEASE_AFTER", 3600.0)
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    turns = Turns()
    assert await budget.wait() is False
    clock.now += BUDGET * 1.5
    turns.start()
    assert await budget.wait() is True  # put off, then started
    turns.stop()
    assert turns.count == 1  # in the next turn, not later


async def test_put_off_requests_start_in_the_order_they_came() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    started: list[int] = []
    assert await budget.wait() is False
    clock.now += BUDGET * 2  # this turn's budget is spent

    async def request(number: int) -> None:
        await budget.wait()
        started.append(number)
        clock.now += BUDGET * 0.625  # each takes 5/8 of a budget: two start a turn

    await asyncio.gather(*(request(number) for number in range(6)))
    assert started == list(range(6))


async def test_each_later_turn_starts_at_most_what_its_budget_allows() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    turns = Turns()
    started_in: list[int] = []
    assert await budget.wait() is False
    clock.now += BUDGET * 2
    turns.start()

    async def request() -> None:
        await budget.wait()
        started_in.append(turns.count)
        clock.now += BUDGET * 0.625

    await asyncio.gather(*(request() for _ in range(6)))
    turns.stop()
    # A turn's first starts at 0, its second at 5/8 of the budget, its third would at 10/8: past
    # it, so it waits for the next turn. Six requests take three turns, two in each.
    assert [started_in.count(t) for t in sorted(set(started_in))] == [2, 2, 2]


async def test_a_request_that_comes_while_others_wait_joins_the_line() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    started: list[str] = []

    async def request(name: str) -> None:
        await budget.wait()
        started.append(name)

    async def first() -> None:
        assert await budget.wait() is False
        clock.now += BUDGET * 2  # it takes the whole budget

    in_one_turn = [asyncio.create_task(first()), asyncio.create_task(request("put off"))]
    await asyncio.sleep(0)  # they have run: the first started, the second waits in line
    assert started == []
    # The next turn's budget has room, but a request is ahead in line: the newcomer goes behind.
    await asyncio.gather(*in_one_turn, request("newcomer"))
    assert started == ["put off", "newcomer"]


async def test_a_request_cancelled_while_it_waits_takes_no_place_in_a_batch() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    started: list[str] = []

    async def request(name: str) -> None:
        await budget.wait()
        started.append(name)
        clock.now += BUDGET * 0.625  # two start a turn: the first batches hold two each

    async def first() -> None:
        assert await budget.wait() is False
        clock.now += BUDGET * 2

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []  # what the loop's callbacks raised: nothing, here
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        in_one_turn = [asyncio.create_task(first())]
        in_one_turn += [asyncio.create_task(request(name)) for name in ("a", "b", "c")]
        await asyncio.sleep(0)  # all three wait in line
        in_one_turn[1].cancel()  # "a" goes away before its release
        await asyncio.wait_for(asyncio.gather(*in_one_turn, return_exceptions=True), 1.0)
    finally:
        loop.set_exception_handler(None)
    assert started == ["b", "c"]
    assert budget.waiting == 0  # nothing is counted as released or in line for "a"
    assert errors == []


def put_off_request_and_reply(loop: asyncio.AbstractEventLoop) -> list[str]:
    """One turn starts a request, spends the budget, puts off a second one, and lasts 2 ms
    while a reply comes in on a socket; what resumes first in the turns after it."""
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)
    order: list[str] = []
    ours, theirs = socket.socketpair()

    async def scenario() -> None:
        reply = loop.create_future()

        def on_reply() -> None:  # the reply's I/O callback, as a protocol's data_received
            theirs.recv(16)
            if not reply.done():
                reply.set_result(None)

        loop.add_reader(theirs.fileno(), on_reply)

        async def reader() -> None:
            await reply
            order.append("reply's reader")

        async def first() -> None:
            assert await budget.wait() is False
            clock.now += BUDGET * 2  # it takes the whole budget
            ours.send(b"+OK\r\n")  # and its reply arrives meanwhile

        async def put_off() -> None:
            assert await budget.wait() is True
            order.append("request put off")

        waiting_reader = asyncio.create_task(reader())
        await asyncio.sleep(0)
        # In one turn: the first starts, the second is put off, then the turn runs on for 2 ms.
        tasks = [asyncio.create_task(first()), asyncio.create_task(put_off())]
        loop.call_soon(time.sleep, 0.002)
        await asyncio.gather(waiting_reader, *tasks)
        loop.remove_reader(theirs.fileno())

    try:
        loop.run_until_complete(scenario())
    finally:
        ours.close()
        theirs.close()
        loop.close()
    return order


@ON_EACH_LOOP
def test_a_request_put_off_starts_after_the_replies_read_in_its_turn(
    make_loop: MakeLoop,
) -> None:
    assert put_off_request_and_reply(make_loop()) == ["reply's reader", "request put off"]


def test_a_budget_left_mid_turn_by_a_stopped_loop_still_starts_requests_on_the_next() -> None:
    clock = SetClock()
    budget = TurnBudget(BUDGET, clock)

    loop = asyncio.new_event_loop()

    async def first() -> None:
        assert await budget.wait() is False  # the budget starts; its turn's end is due...
        loop.stop()  # ...on a loop that stops before running it

    started = loop.create_task(first())
    loop.run_forever()
    assert started.done()
    loop.close()
    clock.now += BUDGET * 2

    async def on_another_loop() -> bool:
        return await asyncio.wait_for(budget.wait(), timeout=1.0)

    assert asyncio.run(on_another_loop()) is False  # a new turn, not a wait for the old one


def test_a_budget_is_a_duration_above_zero() -> None:
    with pytest.raises(ValueError, match="above 0"):
        TurnBudget(0)
