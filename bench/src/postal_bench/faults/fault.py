"""What a fault is: its shape, the metrics windows its evidence reads, and the base class the
faults of `scenarios` and `near_faults` share.

A fault is one of three shapes:

- timed (most): the load runs healthy, `begin()` breaks something, `end()` repairs it, and the
  recovery is measured from the end;
- instant: over once `begin()` returns (a restart, a move), so the recovery is measured from
  there; `end()` has nothing to undo;
- whole run: faulted from the start (a pool of one, an untrusted certificate): no begin, no end,
  no recovery.

A fault allows no stale read, unless it documents a bound (`stale_bound`): a Postal process cut
off from Redis may serve what its near cache holds for that long after another process's write.
Its stale reads are then counted apart: within the bound (no older than it) and past it, which
miss the target.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from postal.observability.metrics import CACHE_OPERATIONS
from postal.stats.scrape import Scrape
from postal_bench.faults.rig import FaultRig


class Shape(Enum):
    TIMED = "timed"
    INSTANT = "instant"
    WHOLE_RUN = "whole run"


@dataclass(frozen=True, slots=True)
class Window:
    """Postal's metrics between two scrapes: counters as differences, gauges as of the last."""

    first: Scrape
    last: Scrape

    def count(self, name: str, **match: str) -> float:
        return self.last.total(name, **match) - self.first.total(name, **match)

    def reads(self, outcome: str) -> int:
        """Cache reads (read role, GET) with this outcome."""
        return round(self.count(CACHE_OPERATIONS, role="read", command="GET", outcome=outcome))

    def gauge(self, name: str, **match: str) -> float:
        return self.last.total(name, **match)


@dataclass(frozen=True, slots=True)
class Observed:
    """What a fault's evidence may look at: metrics over the fault and after it, and the writes
    that failed while the fault was on."""

    during: Window  # from the fault's beginning to its end (whole run: the whole load)
    after: Window  # from the fault's end to the end of the load (empty for whole-run faults)
    failed_writes_during: int
    accepted_writes_during: int = 0  # writes that returned while the fault was on


Evidence = dict[str, float]


class Fault(ABC):
    """One row of the matrix. `set_up` starts what the fault needs and points Postal at it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    shape: ClassVar[Shape] = Shape.TIMED
    database: ClassVar[bool] = False  # the database is what fails: clear 503s are allowed
    # Seconds after another process's write that a read may still get the version before it
    # (see the module docstring); None: never.
    stale_bound: ClassVar[float | None] = None

    @abstractmethod
    async def set_up(self, rig: FaultRig) -> None: ...

    async def begin(self) -> None:
        return None

    async def end(self) -> None:
        return None

    @abstractmethod
    async def evidence(self, observed: Observed) -> Evidence: ...

    @abstractmethod
    def missing(self, evidence: Evidence) -> str | None:
        """Why the evidence does not show the fault happened; None when it does."""
