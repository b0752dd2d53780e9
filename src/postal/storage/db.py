"""The database engine, built by a function (never at import), and its errors mapped in one place.

Two drivers, one engine factory:

- PostgreSQL (`postgresql+asyncpg://`), production: a fixed-size pool (no overflow, so the pool
  size is a hard cap on connections per process), a connect timeout, a server-side
  `statement_timeout` and asyncpg's client-side `command_timeout` (which also bounds a server that
  stopped answering), and a bounded wait for a pooled connection. No pre-ping: it would cost a
  round trip on every checkout, and a connection found dead is invalidated with the rest of the
  pool after one failed request, which gets a retryable `DatabaseUnavailable`.
- SQLite (`sqlite+aiosqlite://`), the embedded default: WAL (readers do not block the writer),
  foreign keys on (the cascade from posts to their versions needs it), and a busy timeout so a
  writer waits for the lock instead of failing at once. The file's directory is created (0700),
  and the file and its WAL and shared-memory files are its owner's only (0600): the database
  is every post, and a machine has other users.

`database_errors()` turns "the database is down, unreachable or too slow" into the domain's
`DatabaseUnavailable`, whose message names the database with its password masked.
`write_transaction()` runs a write transaction with the same mapping, told apart by whether the
COMMIT was sent: `NothingWritten` before it (the write cannot have landed), `DatabaseUnavailable`
at or after it (it may have). The cache's invalidation after a failed write depends on which.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

from asyncpg import exceptions as pg_errors
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from postal.cache import mask_url
from postal.posts.errors import DatabaseUnavailable, NothingWritten

POSTGRES_DRIVER: Final = "postgresql+asyncpg"
SQLITE_DRIVER: Final = "sqlite+aiosqlite"
_MEMORY_DATABASES: Final = ("", ":memory:")
CLIENT_TIMEOUT_MARGIN: Final = 0.5  # seconds after the server's statement timeout


def create_engine(
    url: str, *, pool_size: int, timeout: float, idle_in_transaction: float = 0.0
) -> AsyncEngine:
    """An engine for `url`; `timeout` (seconds, > 0) bounds connecting, each statement and the
    wait for a pooled connection (SQLite: the wait for the write lock). `idle_in_transaction`
    (seconds; 0: never): PostgreSQL ends a session idle this long inside a transaction, which
    frees its connection and its locks; SQLite has no such setting."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    if timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout}")
    if idle_in_transaction < 0:
        raise ValueError(f"idle_in_transaction must not be negative, got {idle_in_transaction}")
    parsed = make_url(url)
    if parsed.drivername == POSTGRES_DRIVER:
        return _postgres_engine(
            parsed, pool_size=pool_size, timeout=timeout, idle_in_transaction=idle_in_transaction
        )
    if parsed.drivername == SQLITE_DRIVER:
        return _sqlite_engine(parsed, pool_size=pool_size, timeout=timeout)
    raise ValueError(
        f"unsupported database URL {mask_url(url)!r}:"
        f" expected {POSTGRES_DRIVER}://... or {SQLITE_DRIVER}:///path"
    )


def _postgres_engine(
    url: URL, *, pool_size: int, timeout: float, idle_in_transaction: float
) -> AsyncEngine:
    server_settings = {  # milliseconds; 0 turns a timeout off
        "statement_timeout": str(round(timeout * 1000)),
        "idle_in_transaction_session_timeout": str(round(idle_in_transaction * 1000)),
    }
    connect_args: dict[str, Any] = {
        "timeout": timeout,  # asyncpg: TCP connect and the start-up handshake
        "server_settings": server_settings,
        # The backstop for a server that stopped answering; a little later than the server's
        # own timeout, which cancels the statement cleanly and keeps the connection.
        "command_timeout": timeout + CLIENT_TIMEOUT_MARGIN,
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=timeout,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL, *, pool_size: int, timeout: float) -> AsyncEngine:
    database = url.database or ""
    pool_args: dict[str, Any] = {}
    if database not in _MEMORY_DATABASES and not database.startswith("file:"):
        keep_private(Path(database))
        pool_args = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": timeout}
    # sqlite3's `timeout` is SQLite's busy timeout: how long a writer waits for the lock.
    engine = create_async_engine(url, connect_args={"timeout": timeout}, **pool_args)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


PRIVATE_DIRECTORY: Final = 0o700
PRIVATE_FILE: Final = 0o600
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def keep_private(database: Path) -> None:
    """An SQLite file its owner alone can read: made 0600 before SQLite opens it (an empty file
    is an empty database to SQLite, which gives its WAL and shared-memory files the same mode),
    or brought to 0600 with those files if an older Postal made them readable. A directory made
    for it is 0700; one that exists is left as it is (it may be the user's home)."""
    database.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    os.close(os.open(database, os.O_CREAT | os.O_RDWR, PRIVATE_FILE))
    for path in (database, *(Path(f"{database}{suffix}") for suffix in SQLITE_COMPANIONS)):
        if path.exists() and path.stat().st_mode & 0o077:
            path.chmod(PRIVATE_FILE)


def describe(engine: AsyncEngine) -> str:
    """The engine's URL as it may be shown: password masked."""
    return mask_url(engine.url.render_as_string(hide_password=False))


# Failures that mean "the database cannot be reached or did not answer in time", as raised by the
# drivers: the OS (refused, reset, unreachable), timeouts, and PostgreSQL's own "not now" answers
# (shutting down, starting up, statement timeout, too many connections, connection lost).
_UNREACHABLE: Final = (
    OSError,  # TimeoutError and ConnectionError included
    pg_errors.PostgresConnectionError,
    pg_errors.OperatorInterventionError,
    pg_errors.InsufficientResourcesError,
    pg_errors.InterfaceError,
)


@contextlib.contextmanager
def database_errors(engine: AsyncEngine) -> Iterator[None]:
    """Raise `DatabaseUnavailable` for a database that cannot be reached or does not answer.

    Any error while connecting counts (a wrong password or database name included: no request
    can be served either way, and the message says which). Errors of a statement on a working
    connection (a constraint violated, a bug) are left as they are: retrying would not help, and
    calling them "unavailable" would send whoever reads the log the wrong way.
    """
    try:
        yield
    except Exception as error:
        unavailable = _as_unavailable(engine, error, DatabaseUnavailable)
        if unavailable is None:
            raise
        raise unavailable from error


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()` with its outages mapped, told apart by whether the COMMIT was sent.

    `engine.begin()` sends the COMMIT when its block ends without an error. Until then nothing can
    have been written, so an outage raises `NothingWritten`: while connecting or waiting for a
    pooled connection, in any statement of the block, or in the rollback after an error in it.
    An outage at the COMMIT or after it (releasing the connection) raises `DatabaseUnavailable`:
    the COMMIT may have reached the database and landed. Cancellation is left as it is: its
    caller cannot tell where it struck.
    """
    committing = False
    try:
        async with engine.begin() as connection:
            yield connection
            committing = True  # leaving the block now sends the COMMIT
    except Exception as error:
        kind = DatabaseUnavailable if committing else NothingWritten
        unavailable = _as_unavailable(engine, error, kind)
        if unavailable is None:
            raise
        raise unavailable from error


def driver_unavailable(engine: AsyncEngine, error: Exception) -> DatabaseUnavailable:
    """`error` as `DatabaseUnavailable` (see `database_errors`), for a connection taken from the
    pool without SQLAlchemy's wrapping that could not be had or was found dead: its errors are
    the driver's own (asyncpg's, or SQLAlchemy's adapter around them, the driver's as its cause)."""
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    return _unavailable(engine, cause, DatabaseUnavailable)


def _as_unavailable(
    engine: AsyncEngine, error: Exception, kind: type[DatabaseUnavailable]
) -> DatabaseUnavailable | None:
    """`error` as a `kind` when it means the database is unavailable; None when it does not."""
    if isinstance(error, _UNREACHABLE):
        return _unavailable(engine, error, kind)
    if isinstance(error, exc.TimeoutError):
        return _unavailable(engine, error, kind, "no pooled connection became free in time")
    if isinstance(error, exc.DBAPIError):
        cause = _driver_error(error)
        if (
            error.connection_invalidated
            or error.statement is None  # raised while connecting
            or isinstance(error, exc.OperationalError | exc.InterfaceError)
            or isinstance(cause, _UNREACHABLE)
        ):
            return _unavailable(engine, cause, kind)
    return None


def _driver_error(error: exc.DBAPIError) -> BaseException:
    """The driver's own exception: asyncpg's hides behind SQLAlchemy's DBAPI adapter."""
    orig: BaseException = error.orig if error.orig is not None else error
    return orig.__cause__ or orig


def _unavailable(
    engine: AsyncEngine, error: BaseException, kind: type[DatabaseUnavailable], reason: str = ""
) -> DatabaseUnavailable:
    lines = str(error).strip().splitlines()
    detail = reason or (lines[0] if lines else "no answer in time")
    message = f"database {describe(engine)} unavailable: {type(error).__name__}: {detail}"
    password = engine.url.password
    if password:  # no driver's message should hold it; make sure
        message = message.replace(str(password), "***")
    return kind(message)
