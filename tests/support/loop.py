"""Waiting on state in tests whose fakes do no I/O: a few turns of the event loop suffice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def spin_until(check: Callable[[], bool], rounds: int) -> None:
    """Let the loop run, one turn at a time, until `check` holds; fail after `rounds` turns."""
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
