"""Events the caching policy emits, as the transport's `CacheEvent` are: small immutable records
handed synchronously to listeners, which must not block or raise.

- `FillEvent`: one per background fill the read-through decided on (`ReadThrough.subscribe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class FillOutcome(StrEnum):
    DONE = "done"  # written
    STALE_REJECTED = "stale_rejected"  # the generation moved on since the read: not written
    SKIPPED = "skipped"  # too many fills pending (or shutting down): not attempted
    BYPASSED = "bypassed"  # an invalidation of the key is pending: not attempted
    FAILED = "failed"  # the cache failed (timeout, unreachable, open breaker, error reply)


@dataclass(frozen=True, slots=True)
class FillEvent:
    key: str  # the value's key, without the client's prefix
    outcome: FillOutcome
    duration: float  # seconds the fill took; 0 when it was not attempted


FillListener = Callable[[FillEvent], None]
