"""PostgreSQL point reads on asyncpg's own `fetchrow`, on a connection of the engine's pool.

`driver_fetchrow` serves the hot path's query, `repository.get`: every cache miss's.

Why around SQLAlchemy: for a point read, its `execute` (the connection wrapper, an execution
context, the result's processing) cost two thirds of the read's CPU, 170-190 us against 50-70
here, measured with 20 reads at a time on this machine. The pool, its timeout and the
connections' set-up (statement timeout, JSON codecs) are the engine's, as for any statement.

What SQLAlchemy does around a failed statement is done here too:
- outages map as in `db.database_errors`, any error while connecting or on a connection found
  dead included;
- a connection whose statement failed or was interrupted (a cancelled request) is invalidated,
  not handed back: what state the driver left it in is not known;
- a connection found dead (a PostgreSQL restart, a failover, a killed backend) invalidates every
  connection the pool opened before it, as SQLAlchemy does on a disconnect
  (`Pool._invalidate`, listed in docs/private-names.md with the version it was read in, which
  tests/unit/test_private_names.py holds the lock to): they died with it, and each would
  otherwise fail one more request.

What it cannot do: anything listening to the engine's statements (the tracing's spans) does not
see these; `listens_to_statements` tells the repository when to keep to SQLAlchemy.
"""

from __future__ import annotations

from typing import Any, Final

from asyncpg import exceptions as pg_errors
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine

from postal.storage.db import database_errors, driver_unavailable

# The connection itself is gone: refused, reset, closed, or its backend terminated. asyncpg
# raises InternalClientError ("another operation is in progress") when a statement is sent on a
# connection whose backend was terminated and whose close it has not processed yet.
_DISCONNECTS: Final = (
    OSError,
    pg_errors.InternalClientError,
    pg_errors.PostgresConnectionError,
    pg_errors.InterfaceError,
    pg_errors.AdminShutdownError,
    pg_errors.CrashShutdownError,
)


async def driver_fetchrow(engine: AsyncEngine, sql: str, *arguments: Any) -> Any:
    """The first row of `sql` (an asyncpg `Record`, or None); `$1`-style parameters."""
    with database_errors(engine):
        try:
            connection = await engine.raw_connection()
        except exc.TimeoutError:
            raise  # no pooled connection came free in time: `database_errors` says so
        except Exception as error:
            raise driver_unavailable(engine, error) from error
        try:
            driver = connection.driver_connection
            if driver is None or driver.is_closed():  # seen closed: not worth sending on
                raise ConnectionError("connection is closed")
            return await driver.fetchrow(sql, *arguments)
        except _DISCONNECTS as error:
            engine.sync_engine.pool._invalidate(connection, error)
            raise driver_unavailable(engine, error) from error
        except BaseException:
            connection.invalidate()
            raise
        finally:
            connection.close()


def listens_to_statements(engine: AsyncEngine) -> bool:
    """Whether anything listens to `engine`'s statements (`before_cursor_execute`, as the
    tracing's spans do), which `driver_fetchrow` would go around."""
    return bool(engine.sync_engine.dispatch.before_cursor_execute)
