"""The current operation's deadline, shared by the executor, the pool and the connection.

The executor (`RedisClient._run`) sets it; the wire's calls check a connection out of the pool
and use it without knowing of any deadline, so it travels in a context variable: the pool bounds
its wait by it and records how far the operation got (dialing, connection handed out), so that
the executor can tell a pool timeout from a slow dial or a timeout on the wire; and a connection
skips a socket timer that the deadline would beat (`PostalConnection`).
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
