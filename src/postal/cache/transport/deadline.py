"""The current operation's deadline, shared by the client and the pool.

redis-py sits between `CacheClient` and `ManagedPool` and calls `pool.get_connection()` without
arguments, so the deadline of the operation in progress travels in a context variable: the pool
bounds its wait by it, and records how far the operation got (dialing, connection handed out), so
that the client can tell a pool timeout from a slow dial or a timeout on the wire.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class Operation:
    deadline: float | None  # event-loop time; None: no deadline
    dialing: bool = False  # set by the pool when it starts opening a connection for this operation
    acquired: bool = False  # set by the pool once a connection is handed to this operation

    def deadline_in(self, now: float) -> float:
        """Seconds left at event-loop time `now`; infinite without a deadline."""
        return float("inf") if self.deadline is None else self.deadline - now


current_operation: ContextVar[Operation | None] = ContextVar("postal_cache_operation", default=None)
