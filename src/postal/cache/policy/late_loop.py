"""Cache operations timed out by this process's late event loop, not Redis: asked once more.

Asked at once, rather than taken as Redis failing. The transport marks such a timeout
(`CacheTimeout.loop_behind`: the loop was behind for half the deadline or more). Redis most
likely answered, or would have, in time: a read would otherwise go to the database, the
costliest place exactly when the worker is saturated (`fallback`); an invalidation would be left
to the background retry while other processes serve the old value (`invalidation`). A second
late timeout, or any other error, is the caller's as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from postal.cache.transport import CacheTimeout

T = TypeVar("T")


async def once_more_if_late(call: Callable[[], Awaitable[T]], asked_again: Callable[[], None]) -> T:
    """`call()`; if it timed out only because this loop was behind, `asked_again()` (a count)
    and `call()` once more. `call` must be safe to repeat."""
    try:
        return await call()
    except CacheTimeout as exc:
        if not exc.loop_behind:
            raise
        asked_again()
        return await call()
