"""`Tracking.catch_up` asks its nodes once per turn of the event loop (pure logic: stand-in nodes,
nothing dials): a later request in the same turn was read before the first ask, so the first
answer holds for it; the next turn asks again; a node that could not catch up is asked again at
once."""

from __future__ import annotations

import asyncio

from postal.cache import Tracking


class Node:
    def __init__(self, caught_up: bool = True) -> None:
        self.caught_up = caught_up
        self.asked = 0

    def catch_up(self) -> bool:
        self.asked += 1
        return self.caught_up


async def test_the_nodes_are_asked_once_a_turn() -> None:
    one, two = Node(), Node()
    tracking = Tracking([one, two])  # type: ignore[list-item]
    assert all(tracking.catch_up() for _ in range(5))
    assert (one.asked, two.asked) == (1, 1)
    await asyncio.sleep(0)  # the next turn
    assert tracking.catch_up()
    assert (one.asked, two.asked) == (2, 2)


async def test_a_node_that_cannot_catch_up_is_asked_each_time_and_all_are_asked() -> None:
    behind, fine = Node(caught_up=False), Node()
    tracking = Tracking([behind, fine])  # type: ignore[list-item]
    assert not tracking.catch_up()
    assert not tracking.catch_up()
    assert (behind.asked, fine.asked) == (2, 2)
    behind.caught_up = True
    assert tracking.catch_up()
    assert tracking.catch_up()
    assert behind.asked == 3
