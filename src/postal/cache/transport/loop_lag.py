"""How late this process's event loop runs: told apart from a slow Redis when a deadline expires.

A cache operation's deadline runs on the event loop, and so does the handling of Redis's reply.
On a loop with work to spare a reply is handled within a millisecond of arriving; on a saturated
one (a CPU-bound worker with 100 requests in flight) it waits behind everything queued before
it, and the deadline can expire while a reply Redis sent in time sits in that queue. Such a
timeout says nothing about Redis, and holding it against Redis opens the circuit breaker with
Redis healthy: every read then goes to the database, which costs more CPU and keeps the loop
saturated. The seed benchmark's tuned run fell to a 48% hit rate that way.

`LoopLag` samples the loop with a callback due every `interval` and keeps the late samples of
the last `memory` seconds. `behind_since(start)` is how long, since an operation began at
`start`, the loop was behind: the stretches between each sample's due time and the moment it
ran, the one under way now included. It counts one long stall (a process descheduled for
150 ms on a busy machine) and many short ones alike (a saturated loop, 30 ms late on every
turn), and only for the operations they overlapped: a stall excuses the timeouts of the
operations it held up, not every timeout of the next second. Cost: one timer
callback every 20 ms. Written by hand: asyncio's debug mode reports slow callbacks only
in logs, and no maintained library exposes loop lag as a number to ask.
"""

from __future__ import annotations

import asyncio
from collections import deque

INTERVAL = 0.020  # seconds between samples
MEMORY = 2.0  # seconds late samples are kept: longer than the operations they are asked about
NOTABLE = 0.001  # seconds: samples less late than this are not kept


class LoopLag:
    def __init__(self, *, interval: float = INTERVAL, memory: float = MEMORY) -> None:
        self._interval = interval
        self._memory = memory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._late: deque[tuple[float, float]] = deque()  # (when it ran, how late), oldest first

    def start(self) -> None:
        """Begin sampling the running loop (idempotent on the same loop)."""
        loop = asyncio.get_running_loop()
        if self._handle is not None and self._loop is loop:
            return
        self.stop()
        self._loop = loop
        self._late.clear()
        self._schedule(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def behind_since(self, start: float) -> float:
        """Seconds, since loop time `start`, during which the loop was behind: between a
        sample's due time and the moment it ran, the sample overdue now included (samples are
        due one after another, so these stretches never overlap); 0 when not sampling."""
        if self._loop is None or self._handle is None:
            return 0.0
        now = self._loop.time()
        behind = max(0.0, now - max(self._due, start))
        for ran_at, late in reversed(self._late):
            if ran_at <= start:
                break
            behind += ran_at - max(ran_at - late, start)
        return behind

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self._interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        late = now - self._due
        if late >= NOTABLE:
            self._late.append((now, late))
        while self._late and now - self._late[0][0] > self._memory:
            self._late.popleft()
        self._schedule(now)
