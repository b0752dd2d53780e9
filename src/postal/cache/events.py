"""Events the cache layer emits, one per operation; metrics and logs subscribe to them.

The pool and the client know nothing about Prometheus or log formats: they call listeners with a
small immutable record, and observability code at the edge turns it into what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    HIT = "hit"
    MISS = "miss"
    OK = "ok"
    TIMEOUT = "timeout"
    POOL_TIMEOUT = "pool_timeout"
    CONNECTION_ERROR = "connection_error"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CacheEvent:
    role: str  # "read" or "write"
    command: str  # "GET", "MGET", "SET", "DEL", "PIPELINE"
    key: str | None  # the first key, for the slow log's key prefix; None for pipelines
    duration: float  # seconds, from the moment the operation was requested (pool wait included)
    outcome: Outcome
    in_use: int  # pool state when the operation ended
    idle: int
    error: str | None = None


CacheListener = Callable[[CacheEvent], None]
