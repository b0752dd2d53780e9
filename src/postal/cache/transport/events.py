"""Events the transport emits; metrics and logs subscribe to them.

The pool and the client know nothing about Prometheus or log formats: they call
listeners with a small immutable record, and observability code at the edge turns it into what it
needs. Listeners are called synchronously and must not block or raise.

- `CacheEvent`: one per client operation (`RedisClient.subscribe`).
- `PoolWaitEvent`: one per checkout that had to queue for a connection
  (`ManagedPool.subscribe_waits`).
- Breaker state changes are `breaker.BreakerChange` (`CircuitBreaker.subscribe`).

The caching policy's own, one per background fill, is `cache.policy.events.FillEvent`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Outcome(StrEnum):
    HIT = "hit"
    MISS = "miss"
    OK = "ok"
    TIMEOUT = "timeout"
    POOL_TIMEOUT = "pool_timeout"
    CONNECTION_ERROR = "connection_error"
    CIRCUIT_OPEN = "circuit_open"  # refused by the open breaker: no I/O, duration about 0
    ERROR = "error"


class CacheEvent(NamedTuple):
    """A named tuple, not a frozen dataclass, though as immutable: it is made on every
    operation, and a frozen dataclass's `__init__` took 1.3 µs against this one's 0.6."""

    role: str  # "read" or "write"
    # "GET", "MGET", "SET", "DEL", "PIPELINE", "EVALSHA": the command sent, except that
    # `get_guarded` (an MGET of value and generation) reports "GET", so hit-rate metrics count
    # guarded reads with plain ones; `fill_guarded` is "EVALSHA", `invalidate` is "PIPELINE".
    command: str
    key: str | None  # the (first) key, for the slow log's key prefix
    duration: float  # seconds, from the moment the operation was requested (pool wait included)
    outcome: Outcome
    in_use: int  # pool state when the operation ended (the node's pool)
    idle: int
    error: str | None = None
    node: str = ""  # "host:port" of the server it went to ("" if none was picked)


CacheListener = Callable[[CacheEvent], None]


@dataclass(frozen=True, slots=True)
class PoolWaitEvent:
    role: str  # the pool's role: "read" or "write"
    waited: float  # seconds queued; 0 when the operation's deadline had passed before queueing
    served: bool  # False: it gave up (pool timeout, deadline), or the dial or the pool failed
    node: str = ""  # "host:port" of the server the pool dials (its `node` label in the metrics)


PoolWaitListener = Callable[[PoolWaitEvent], None]
