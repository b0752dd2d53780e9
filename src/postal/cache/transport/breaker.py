"""A circuit breaker: stop paying a dead Redis's deadline on every request.

When Redis is black-holed, every operation waits out its whole deadline before the caller falls
back; under load that is the deadline added to every request. After `failure_threshold`
consecutive failures, spanning at least `failure_window` seconds since the last success (so that
a burst of deadlines expiring together on a busy process is not taken for a dead Redis), the
breaker opens and callers fail at once (`CircuitOpen`, no I/O); after
`cooldown` seconds it lets exactly one probe through (half-open): the probe's success closes the
breaker, its failure opens it for a fresh cooldown.

    closed --threshold consecutive failures--> open --cooldown passed, allow()--> half_open
    half_open --probe succeeded--> closed          half_open --probe failed--> open

What counts as a failure is the caller's call (`RedisClient` counts timeouts, pool timeouts and
unreachable Redis; an error reply means Redis answered, which is a success). The breaker is plain
synchronous state with an injected clock: no task, no timer, no I/O, so it is tested with a fake
clock and costs two method calls per operation.

Results are not matched to the calls that produced them: a failure recorded while half-open opens
the breaker even if it came from an operation started before it opened (the conservative choice),
and in the open state late results are ignored, so only the probe ends a cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class BreakerState(IntEnum):
    """The breaker's state. The metrics gauge numbers states its own way (0 closed, 1 half
    open, 2 open: observability/metrics.py maps them), so these values mean nothing outside."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """The breaker `name` went from `old` to `new` at `at` (its clock's time)."""

    name: str  # the role
    old: BreakerState
    new: BreakerState
    at: float
    node: str = ""  # which of the role's servers


BreakerListener = Callable[[BreakerChange], None]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    name: str
    state: BreakerState
    consecutive_failures: int
    opened: int  # times it opened (a failed probe re-opening counts), since it was built
    rejected: int  # calls refused while open or while a probe was in flight


class CircuitBreaker:
    """Closed / open / half-open around one resource (one server of a cache role)."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        failure_window: float = 0.0,
        name: str = "",
        node: str = "",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure threshold must be at least 1, got {failure_threshold}")
        if cooldown <= 0:
            raise ValueError(f"cooldown must be positive, got {cooldown}")
        self.name = name
        self.node = node
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.failure_window = failure_window
        self._clock = clock
        self._last_success = clock()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False  # half-open: the one probe is in flight
        self._opened = 0
        self._rejected = 0
        self._listeners: list[BreakerListener] = []

    # -- the caller's side -------------------------------------------------------------------

    def allow(self) -> bool:
        """Whether the call may go ahead; when it does, report its result with `record_*`."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._change(BreakerState.HALF_OPEN)
            self._probing = True
            return True  # the probe
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True  # the last probe was abandoned: this call probes instead
            return True
        self._rejected += 1
        return False

    def record_success(self) -> None:
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures = 0
            self._last_success = self._clock()
        elif state is BreakerState.HALF_OPEN:
            self._probing = False
            self._failures = 0
            self._last_success = self._clock()
            self._change(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if (
                self._failures >= self.failure_threshold
                and self._clock() - self._last_success >= self.failure_window
            ):
                self._open()
        elif state is BreakerState.HALF_OPEN:
            self._probing = False
            self._open()

    def record_cancelled(self) -> None:
        """The call ended without a verdict (its caller was cancelled).

        In half-open this frees the probe slot, so the next call probes instead of the breaker
        waiting forever for a result that will never come.
        """
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False

    # -- observability -----------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown passed stays OPEN until a call
        comes and probes."""
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through; 0 when not open."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def stats(self) -> BreakerStats:
        return BreakerStats(
            name=self.name,
            state=self._state,
            consecutive_failures=self._failures,
            opened=self._opened,
            rejected=self._rejected,
        )

    def subscribe(self, listener: BreakerListener) -> None:
        """Call `listener` with a `BreakerChange` on every state change (it must not block)."""
        self._listeners.append(listener)

    def __repr__(self) -> str:
        where = f"{self.name} {self.node}".strip()
        return f"<CircuitBreaker {where} {self._state.name.lower()} opened={self._opened}>"

    # -- transitions -------------------------------------------------------------------------

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._opened += 1
        self._failures = 0
        self._change(BreakerState.OPEN)

    def _change(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new or not self._listeners:
            return
        change = BreakerChange(self.name, old, new, self._clock(), self.node)
        for listener in self._listeners:
            listener(change)
