"""The import's ports (`imports.ports`) in SQL: `SqlImportStore` and its `SqlImportUnitOfWork`.

    store = SqlImportStore(engine)               # "auto": COPY on PostgreSQL, INSERT on SQLite
    async with store.unit_of_work() as uow:      # nothing on the database yet
        current = await uow.current_versions(ids, lock=True)  # a connection, BEGIN (SQLite: its
                                                              # write lock): the first batch
        await uow.create(new)
        await uow.update(changes, current, now)
        await uow.commit()                       # or rollback(); leaving without either rolls back

A unit of work is one import's transaction on one connection, its batches `bulk.BulkWriter`'s
(COPY or INSERT, rows locked in id order, a deadlock raised as `ImportConflict`). The connection
is taken and the transaction begun by the first statement, not on entering the block: an upload
that sends its header and then nothing (or sends slowly, or only bad rows) holds no pooled
connection and no transaction (nor, on SQLite, the database's write lock) until it has a batch to
write; a unit of work that never wrote commits and rolls back nothing. Whatever
leaves the block goes through `database_errors`, from connecting to closing: an outage becomes
`DatabaseUnavailable`, as when the importer held the engine itself. That covers exceptions the
caller raises inside the block too, so an `OSError` of its own (reading its file, say) would be
called the database's: the caller raises something else for those (`postal.cli.import_run` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncTransaction

from postal.imports.ports import NewPost, PostChange
from postal.posts.models import Post
from postal.storage.bulk import BulkWriter, MethodChoice, WriteMethod, choose_method, read_posts
from postal.storage.db import database_errors, describe


class SqlImportStore:
    """`ImportStore` on an `AsyncEngine`: PostgreSQL (COPY or INSERT) or SQLite (INSERT).

    `method`: "copy" asked of a database other than PostgreSQL is a ValueError, here.
    """

    def __init__(self, engine: AsyncEngine, method: MethodChoice = "auto") -> None:
        self._engine = engine
        self._method = choose_method(engine, method)
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")

    def __repr__(self) -> str:
        return f"<SqlImportStore {describe(self._engine)} method={self._method}>"

    @property
    def method(self) -> WriteMethod:
        return self._method

    def unit_of_work(self) -> SqlImportUnitOfWork:
        return SqlImportUnitOfWork(self._engine, self._method)

    async def read_posts(self, post_ids: Sequence[int]) -> list[Post]:
        """Outside any transaction (autocommit): what has been committed."""
        with database_errors(self._engine):
            async with self._reads.connect() as connection:
                return await read_posts(connection, post_ids)


class SqlImportUnitOfWork:
    """`ImportUnitOfWork`: one transaction on one connection; see the module docstring."""

    def __init__(self, engine: AsyncEngine, method: WriteMethod) -> None:
        self._engine = engine
        self._method = method
        self._entered = False
        self._inside = False  # between entering the block and leaving it
        self._stack: AsyncExitStack | None = None  # open from the first statement to the exit
        self._transaction: AsyncTransaction | None = None
        self._writer: BulkWriter | None = None

    def __repr__(self) -> str:
        if self._transaction is None:
            state = "not begun"
        else:
            state = "open" if self._transaction.is_active else "ended"
        return f"<SqlImportUnitOfWork method={self._method} {state}>"

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a unit of work is entered once; ask the store for another")
        self._entered = self._inside = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._inside = False
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, traceback)

    async def current_versions(self, post_ids: Sequence[int], *, lock: bool) -> dict[int, int]:
        return await (await self._begun_writer()).current_versions(post_ids, lock=lock)

    async def create(self, new: Sequence[NewPost]) -> list[int]:
        return await (await self._begun_writer()).create(new)

    async def update(
        self, changes: Sequence[PostChange], current: Mapping[int, int], at: datetime
    ) -> None:
        await (await self._begun_writer()).update(changes, current, at)

    async def commit(self) -> None:
        """COMMIT, if anything began; nothing was written otherwise."""
        transaction = self._open_transaction()
        if transaction is not None:
            await transaction.commit()

    async def rollback(self) -> None:
        transaction = self._open_transaction()
        if transaction is not None:
            await transaction.rollback()

    # -- the pieces -------------------------------------------------------------------------

    async def _begun_writer(self) -> BulkWriter:
        """The writer on the transaction, which the first call begins."""
        self._check_inside()
        if self._writer is not None:
            return self._writer
        if self._transaction is not None:
            raise RuntimeError("the unit of work has ended its transaction")
        async with AsyncExitStack() as stack:
            # Entered first, left last: it sees everything that leaves the block.
            stack.enter_context(database_errors(self._engine))
            connection = await stack.enter_async_context(self._engine.connect())
            self._transaction = await stack.enter_async_context(connection.begin())
            # Left before the transaction's own exit, which would COMMIT on a clean exit.
            stack.push_async_callback(self._roll_back_unless_ended)
            writer = BulkWriter(connection, self._method)
            await writer.start()
            self._stack = stack.pop_all()
        self._writer = writer
        return writer

    def _open_transaction(self) -> AsyncTransaction | None:
        """The transaction, or None when nothing began it."""
        self._check_inside()
        return self._transaction

    def _check_inside(self) -> None:
        if not self._inside:
            raise RuntimeError("the unit of work is used outside its `async with` block")

    async def _roll_back_unless_ended(self) -> None:
        if self._transaction is not None and self._transaction.is_active:
            await self._transaction.rollback()
