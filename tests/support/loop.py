"""Event loops in tests: waiting on state in tests whose fakes do no I/O (a few turns of the
event loop suffice), and a test run on each of the loops Postal runs on (asyncio's, uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

MakeLoop = Callable[[], asyncio.AbstractEventLoop]
# A test taking `make_loop`, run once with asyncio's own loop and once with uvloop's (what
# `postal serve` runs): where the order of callbacks or the timers' granularity matter.
ON_EACH_LOOP = pytest.mark.parametrize(
    "make_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


async def spin_until(check: Callable[[], bool], rounds: int) -> None:
    """Let the loop run, one turn at a time, until `check` holds; fail after `rounds` turns."""
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
