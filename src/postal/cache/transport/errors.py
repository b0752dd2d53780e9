"""The cache layer's exceptions, the only ones its callers need to catch.

    CacheError                 any failure of a cache operation
    ├── CacheTimeout           the operation's deadline expired, or a socket timeout (connect,
    │   │                      read or write) did: Redis is there but too slow
    │   └── PoolTimeout        ...while waiting for a free connection in the pool
    └── CacheUnavailable       Redis cannot be reached: refused, reset, DNS failure, TLS or
        │                      authentication failure, or the pool is closed
        └── CircuitOpen        not even tried: the role's circuit breaker is open after
                               repeated failures (no I/O was done; it fails in microseconds)

redis-py's own exceptions are mapped to these in one place, `client`, so no
caller outside the transport ever imports `redis.exceptions` (whose ConnectionError and
TimeoutError shadow the built-ins).
A plain `CacheError` means Redis answered, but not as expected (an error reply such as a wrong
type, or a malformed stored value): Redis is there, so it does not count against the breaker.

Messages never contain a password: addresses are shown through `urls.mask_url`.
"""

from __future__ import annotations


class CacheError(Exception):
    """A cache operation failed. Callers that only want "did it work" catch this."""


class CacheTimeout(CacheError):
    """The operation did not finish within its deadline or a socket timeout.

    `loop_behind`: this process's event loop, not Redis, let the deadline expire (it was behind
    for half the deadline or more while the operation ran; see `loop_lag`). Redis had most likely
    answered in time, so a read may be worth asking again rather than sending to the database.
    """

    loop_behind: bool = False


class PoolTimeout(CacheTimeout):
    """No connection became free in time: the pool is exhausted (too small or Redis is slow)."""


class CacheUnavailable(CacheError):
    """Redis could not be reached or refused us (connection, DNS, TLS, auth, or pool closed)."""


class CircuitOpen(CacheUnavailable):
    """The role's circuit breaker is open: the operation failed at once, without any I/O.

    A subclass of `CacheUnavailable`, so callers that fall back when Redis is unreachable need no
    extra `except`; catch it on its own only to tell "failed fast" from "tried and failed".
    """
