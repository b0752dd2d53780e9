"""The loop-turn budget: a worker starts new HTTP requests for at most `POSTAL_TURN_BUDGET` of
each turn of its event loop; the rest start in the next turn.

Why: a reply from Redis or the database is handled only once the turn that is running ends, and
its reader resumes in the turn after that, behind the callbacks queued before it. When a turn
starts every request that arrived meanwhile (100 keep-alive connections sending their first
requests at once; any burst on a saturated worker), it runs for milliseconds, and so waits every
operation in flight, cache GETs included, that much longer than the round trip. Bounding the
time a turn spends starting requests bounds that wait: a request that finds this turn's budget
spent yields once (`asyncio.sleep(0)`) and starts in the next turn, after the replies read in
between have been handed to their readers. Requests put off wait in arrival order (a task
yielding is queued before those the next poll brings) and are already counted by admission
(`api/admission.py`), so `POSTAL_MAX_IN_FLIGHT` bounds how many wait.

Below saturation the budget is never reached: one request takes microseconds to start, and the
first request of every turn starts at once. Measured with `postal bench seed`'s load (100
connections back to back on one worker, 3 runs each, docs/operations.md#the-loop-turn-budget):
at 2 ms, 100% of the cache GETs within 10 ms in each run against 98.3-98.9% with no budget, at
the same throughput and request p50 and p99; at 1 ms, request p99 falls from about 45 to 28 ms
and p50 rises from about 2.6 to 4.8.

Why by hand: asyncio and uvloop run every ready callback of a turn (there is no budget to set),
uvicorn starts a request's task as soon as its head is parsed, and Starlette has no hook before
that; Tokio's cooperative budget is the same idea one level down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TurnBudget:
    """The start of this turn's first request, and `wait()` for each request's start."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if budget <= 0:
            raise ValueError(f"a turn budget is a duration above 0, got {budget}")
        self.budget = budget
        self._clock = clock
        self._first_start = -1.0  # this turn's first request started then; < 0: none yet
        # The loop `_next_turn` is due on: a budget used on another loop (a test's next one)
        # must not wait for a callback that a stopped loop will never run.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> bool:
        """Return once this request may start: at once while this turn's budget lasts, else in
        a later turn. True when it was put off."""
        deferred = False
        while True:
            now = self._clock()
            if self._first_start < 0:  # the turn's first request: the budget starts now
                self._first_start = now
                # Runs at the next turn's start, before the requests put off in this one.
                self._loop = asyncio.get_running_loop()
                self._loop.call_soon(self._next_turn)
                return deferred
            if now - self._first_start <= self.budget:
                return deferred
            if asyncio.get_running_loop() is not self._loop:  # its turn will never end
                self._first_start = -1.0
                continue
            deferred = True
            await asyncio.sleep(0)  # to the back of the queue: the next turn

    def _next_turn(self) -> None:
        self._first_start = -1.0
