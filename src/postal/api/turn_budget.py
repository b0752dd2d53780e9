"""The loop-turn budget: a worker starts new HTTP requests for at most `POSTAL_TURN_BUDGET` of
each turn of its event loop; the rest wait in line and start in later turns, after the replies
that came in meanwhile have resumed their readers.

Why: a reply from Redis or the database is handled only once the turn that is running ends, and
its reader resumes in the turn after that, behind the callbacks queued before it. When a turn
starts every request that arrived meanwhile (100 keep-alive connections sending their first
requests at once; any burst on a saturated worker), it runs for milliseconds, and so waits every
operation in flight, cache GETs included, that much longer than the round trip. Bounding the
time a turn spends starting requests bounds that wait. Requests put off are already counted by
admission (`api/admission.py`), so `POSTAL_MAX_IN_FLIGHT` bounds how many wait.

How a request put off waits: in a first-come line, on a future of its own. A batch of about as
many as the budget started last time is released at once, and starts in the following turn.
- Released by a timer, so behind the replies: asyncio and uvloop queue the callbacks of a turn's
  I/O (a reply read, a reader's wake-up) before those of the timers that fell due with it, and
  anything released by a plain callback would start ahead of them. The timer is armed when a
  batch starts, RELEASE_AFTER ahead, so it is due by the time a budget of a millisecond or more
  is spent. In a turn too short for that, the turn's first callback (`_next_turn`) releases the
  batch instead, ahead of that turn's replies, as the first version always did.
- Woken once: a batch estimated too large sends its tail to the head of the line. The first
  version re-queued every request put off once a turn (`asyncio.sleep(0)`) until it could start.
- Nobody overtakes: while anyone waits, in line or released, a new request joins the line.

Measured on 2026-12-07 (docs/operations.md#the-loop-turn-budget): under `postal bench http`
(100 connections, near-cache hits, interleaved runs) the first version at 2 ms gave 0.75x and
0.86x the bare route's req/s, this one at 1 ms 0.93x and 0.93x; under `postal bench seed`, with
this one at 1 ms, 99.3-99.7% of each run's cache GETs took 10 ms or less, against 85-92% with
the first version at 2 ms. With the near cache off (every hit a Redis GET) 1 ms gave 0.45-0.50x
against 0.50-0.57x: shorter turns batch fewer pipelined GETs per write. Since a Redis-served
read costs less (one timer for all the operations' deadlines, `cache/transport/shared_deadlines`),
0.52-0.57x at 1 ms.

Below saturation the budget is never reached: one request takes microseconds to start, the first
request of every turn starts at once, and so does every request while nobody waits.

Why by hand: asyncio and uvloop run every ready callback of a turn (there is no budget to set),
uvicorn starts a request's task as soon as its head is parsed, and Starlette has no hook before
that; Tokio's cooperative budget is the same idea one level down.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

FIRST_BATCH = 16  # requests released at once before any turn's starts have been timed
MAX_BATCH = 1024  # requests released at once, however cheap each start has been
SMOOTHING = 0.25  # weight of the latest turn in the running estimate of one start's cost
# The smallest delay uvloop keeps as a timer: it runs one under half a millisecond as
# `call_soon`, which would release the batch ahead of the replies.
RELEASE_AFTER = 0.001  # seconds


class TurnBudget:
    """This turn's starts, the line of requests put off, and `wait()` for each request's
    start."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if budget <= 0:
            raise ValueError(f"a turn budget is a duration above 0, got {budget}")
        self.budget = budget
        self._clock = clock
        # The loop the state below belongs to: a budget used on another loop (a test's next
        # one) starts afresh rather than wait for callbacks a stopped loop will never run.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_start = -1.0  # this turn's first request started then; < 0: none yet
        self._started = 0  # requests started in this turn
        self._last_start = 0.0  # how far into the budget this turn's last start came
        self._turn_due = False  # `_next_turn` is scheduled
        self._line: deque[asyncio.Future[None]] = deque()  # put off, first come first
        self._returned: deque[asyncio.Future[None]] = deque()  # released past the budget
        self._released = 0  # released and not woken yet
        self._timer: asyncio.TimerHandle | None = None  # the next release, when armed
        self._cost = 0.0  # running estimate of one start's cost (s); 0: not timed yet

    @property
    def waiting(self) -> int:
        """Requests put off and not started yet."""
        return len(self._line) + len(self._returned) + self._released

    async def wait(self) -> bool:
        """Return once this request may start: at once while this turn's budget lasts and
        nobody waits, else in a later turn. True when it was put off."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        if not self.waiting and self._may_start():
            return False
        line = self._line
        while True:
            waiter = loop.create_future()
            line.append(waiter)
            self._arm()
            try:
                await waiter
            finally:
                if waiter.done() and not waiter.cancelled():  # it was released
                    self._released -= 1
            if self._may_start():
                return True
            line = self._returned  # released past the budget: first in the next batch

    def _may_start(self) -> bool:
        """Whether a request starting now fits this turn's budget; counts it if so."""
        now = self._clock()
        if self._first_start < 0:  # the turn's first request: the budget starts now
            self._first_start = now
            self._started = 1
            self._last_start = 0.0
            self._schedule_turn()
            if self._line or self._returned:  # a batch starting: the next is due after it
                self._arm()
            return True
        elapsed = now - self._first_start
        if elapsed <= self.budget:
            self._started += 1
            self._last_start = elapsed
            return True
        return False

    def _arm(self) -> None:
        """The next release by the timer, and `_next_turn` for the budget's reset."""
        self._schedule_turn()
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(RELEASE_AFTER, self._release_by_timer)

    def _schedule_turn(self) -> None:
        if not self._turn_due and self._loop is not None:
            self._turn_due = True
            self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """The first callback of a turn: a fresh budget; and, while requests wait, the next
        batch released now unless one is on its way or the timer fires in this turn."""
        self._turn_due = False
        self._learn()
        self._first_start = -1.0
        if not self._line and not self._returned:
            return
        self._schedule_turn()  # due again next turn: the batch's budget starts fresh there
        if self._released or self._timer_fires_now():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()

    def _timer_fires_now(self) -> bool:
        """Whether the release timer fell due with this turn: asyncio runs it later in the
        turn, behind its I/O (uvloop has run it already, before this callback)."""
        timer, loop = self._timer, self._loop
        return timer is not None and loop is not None and timer.when() <= loop.time()

    def _release_by_timer(self) -> None:
        self._timer = None
        if not self._released:
            self._release()

    def _release(self) -> None:
        """Wake the next batch: those returned first, then the line, in order."""
        batch = self._batch()
        for line in (self._returned, self._line):
            while line and self._released < batch:
                waiter = line.popleft()
                if not waiter.done():  # a request cancelled while it waited takes no place
                    waiter.set_result(None)
                    self._released += 1

    def _learn(self) -> None:
        """Fold the ending turn's starts into the estimate of one start's cost."""
        if self._first_start < 0 or self._started < 2:
            return
        cost = self._last_start / (self._started - 1)
        self._cost = cost if self._cost == 0 else self._cost + SMOOTHING * (cost - self._cost)

    def _batch(self) -> int:
        """How many to release: as many as the budget started, by the estimate (the first
        start of a turn costs none of it)."""
        if self._cost <= 0:
            return FIRST_BATCH
        return max(1, min(MAX_BATCH, int(self.budget / self._cost) + 1))

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._first_start = -1.0
        self._turn_due = False
        self._timer = None  # due on a loop that no longer runs: dropped, not cancelled there
        self._released = 0
        self._line.clear()
        self._returned.clear()
