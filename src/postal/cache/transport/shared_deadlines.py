"""Operations' deadlines on one event-loop timer, in place of a timer each.

`SharedDeadlines.bound(when)` does what `asyncio.timeout_at(when)` does: past `when` the task in
the block is cancelled, and the block raises TimeoutError (a cancellation from anyone else stays
a cancellation). The difference is the timer. `asyncio.timeout_at` arms one for each block and
cancels it at the end; under uvloop that costs 2.3 µs a block alone, and about 7 µs a Redis GET
in a loop of 100 concurrent readers (measured on 2026-12-07 with the read path's own executor:
30-32 µs of CPU a read with a timer each, 24 without one). Here the blocks wait in a heap by
deadline, and one timer is armed for the earliest. Entering and leaving a block costs a heap push
and a flag; the timer is armed again only when a block's deadline comes before the armed one
(a GET's 100 ms after a SET's 200 ms), and otherwise fires about once per deadline's length,
where it drops the blocks that have ended and cancels those that have not.

Bounded: ended blocks leave the heap when they reach its head, at the next block's entry or when
the timer fires. The head is the earliest deadline, and a block still running there leaves by
its deadline at the latest; so an ended block stays at most until the deadline of one entered
before it, and the heap holds about the blocks entered within one deadline's length (a block
with a long deadline sits deep in the heap and holds nothing up).

Why by hand: asyncio, uvloop and the libraries on them (`async_timeout`, anyio's cancel scopes)
arm a timer per scope; none shares one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType

_ENTERED, _EXPIRING, _EXITED = range(3)


class Bound:
    """One `async with` block under a deadline; see the module docstring."""

    __slots__ = ("_cancelling", "_deadlines", "_state", "_task", "when")

    def __init__(self, deadlines: SharedDeadlines, when: float | None) -> None:
        self._deadlines = deadlines
        self.when = when  # event-loop time; None: no deadline
        self._state = _ENTERED
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    @property
    def ended(self) -> bool:
        """The block has been left (the heap may drop it)."""
        return self._state == _EXITED

    async def __aenter__(self) -> Bound:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is kept for a task; none is running")
        self._task = task
        self._cancelling = task.cancelling()
        if self.when is not None:
            self._deadlines.add(self, self.when, task.get_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        state, task = self._state, self._task
        self._state = _EXITED
        self._task = None  # the heap may hold this block a while: not its task
        # Ours unless someone else asked to cancel the task too (as asyncio.Timeout tells).
        if (
            state == _EXPIRING
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def expire(self) -> None:
        """The deadline has passed: cancel the task, unless the block has ended."""
        if self._state == _ENTERED and self._task is not None:
            self._state = _EXPIRING
            self._task.cancel()


class SharedDeadlines:
    """The blocks under a deadline on one event loop, and the one timer for all of them. Used
    on another loop (a test's next one), it starts afresh."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[float, int, Bound]] = []
        # Ties in deadline: first in, first out (and two Bounds are never compared).
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def bound(self, when: float | None) -> Bound:
        """A block that raises TimeoutError once event-loop time `when` has passed (None:
        never)."""
        return Bound(self, when)

    def __len__(self) -> int:
        """Blocks held: those entered and not dropped yet (ended ones included)."""
        return len(self._heap)

    def add(self, bound: Bound, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Hold `bound`, due at `when`, on `loop`: its task's (asked of the task, not of
        `asyncio.get_running_loop()`, which asks the process id on every call in 3.11)."""
        if loop is not self._loop:
            self._adopt(loop)
        heap = self._heap
        while heap and heap[0][2].ended:  # the oldest have ended, most of the time
            heapq.heappop(heap)
        heapq.heappush(heap, (when, next(self._order), bound))
        if self._timer is None or when < self._timer_when:
            self._arm(loop, when)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._heap, self._timer = loop, [], None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_when = when

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        # Due: what the armed time covers, though the loop ran the timer a little before it
        # (uvloop keeps milliseconds, asyncio allows its clock's resolution), as a timer of
        # asyncio.timeout_at's own would have expired then.
        due = max(loop.time(), self._timer_when)
        heap = self._heap
        while heap and (heap[0][2].ended or heap[0][0] <= due):
            heapq.heappop(heap)[2].expire()
        if heap:
            self._arm(loop, heap[0][0])
