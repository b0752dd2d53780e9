"""How late this process's event loop runs: told apart from a slow Redis when a deadline expires.

A cache operation's deadline runs on the event loop, and so does the handling of Redis's reply.
On a loop with work to spare a reply is handled within a millisecond of arriving; on a saturated
one (a CPU-bound worker with 100 requests in flight) it waits behind everything queued before
it, and the deadline can expire while a reply Redis sent in time sits in that queue. Such a
timeout says nothing about Redis, and holding it against Redis opens the circuit breaker with
Redis healthy: every read then goes to the database, which costs more CPU and keeps the loop
saturated. The seed benchmark's tuned run fell to a 48% hit rate that way.

`LoopLag` samples the loop with a callback due every `interval` and remembers the worst
lateness seen within the last `memory` seconds; `recent()` also counts the lateness of the
sample that is overdue right now, so a stall is seen while it lasts, not only after. Cost: one
timer callback every 20 ms. Written by hand: asyncio's debug mode reports slow callbacks only
in logs, and no maintained library exposes loop lag as a number to ask.
"""

from __future__ import annotations

import asyncio

INTERVAL = 0.020  # seconds between samples
MEMORY = 0.5  # seconds a peak is remembered


class LoopLag:
    def __init__(self, *, interval: float = INTERVAL, memory: float = MEMORY) -> None:
        self._interval = interval
        self._memory = memory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._peak = 0.0
        self._peak_at = float("-inf")

    def start(self) -> None:
        """Begin sampling the running loop (idempotent on the same loop)."""
        loop = asyncio.get_running_loop()
        if self._handle is not None and self._loop is loop:
            return
        self.stop()
        self._loop, self._peak, self._peak_at = loop, 0.0, float("-inf")
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def recent(self) -> float:
        """Seconds: the worst lateness within `memory`, or of the sample overdue now; 0 when
        not sampling."""
        if self._loop is None or self._handle is None:
            return 0.0
        now = self._loop.time()
        overdue = now - self._due
        peak = self._peak if now - self._peak_at <= self._memory else 0.0
        return max(peak, overdue)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self._interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        late = now - self._due
        if late >= self._peak or now - self._peak_at > self._memory:
            self._peak, self._peak_at = late, now
        self._schedule(now)
