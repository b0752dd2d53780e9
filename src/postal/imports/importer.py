"""Bulk CSV import of posts: stream the file, check every row, write in batches, one transaction.

    importer = PostImporter(store, cache, invalidator, ttls=ttls, max_body_bytes=1_000_000)
    report = await importer.run(chunks)            # chunks: an async iterable of bytes
    if not report.committed: print(report.errors)  # nothing was written

- Streaming: the bytes go through `CsvRowReader` chunk by chunk (cut to FEED_BYTES, whatever the
  source's chunks); rows are written `batch_size` at a
  time, or fewer when their text reaches `batch_chars` (large bodies); what is kept for the whole
  file is the ids of the posts touched (8 bytes each, in an `array`), the ids read (`SeenIds`)
  and at most `max_reported_errors` errors. Memory stays flat whatever the file's size.
- One transaction for the whole file: a unit of work the `ImportStore` gives (`ports`), which
  the importer commits or rolls back. It begins with the first batch written, so an upload that
  has sent no batch yet (a header, then nothing) holds no database connection. By default all or
  nothing: at the first bad row nothing more is written, but the rest of the file is still read
  and checked so that the report lists every bad row (the first `max_reported_errors` by line,
  and the total), then the transaction is rolled back. With `skip_invalid`, good rows are
  written, bad ones skipped and reported, and it commits.
- A row without `id` creates a post (version 1, its created_at the row's or now). A row with `id`
  makes its content that post's next version (updated_at now; the post's created_at does not
  change, and a created_at on such a row is ignored: history is not rewritten by an import). An
  `id` that is not a post is a bad row (`unknown_id`), found by reading the batch's posts under a
  row lock, which also gives their current versions.
- The cache is left alone while rows are written; after the commit `cache_step.ImportCacheStep`
  invalidates (or warms) the touched keys in batches, one round trip each, before `run` returns.
  If Redis does not take it the import is still committed, and the report says it is pending.
- `run` raises only `DatabaseUnavailable` (the database failed: rolled back), `ImportConflict`
  (a concurrent import deadlocked with this one: rolled back), what `chunks`
  raises (a client gone, Ctrl-C, a body over its limit) and cancellation, all of which roll back:
  an interrupted import leaves the database as it was. A database failure or a cancellation
  while the commit is in flight is the exception: the commit may have landed, so the touched keys
  are invalidated all the same before it propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from array import array
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from postal.imports.cache_step import CacheStepReport, ImportCacheStep
from postal.imports.csv_rows import CsvHeaderError, CsvRowReader, ImportRow, RowError, RowProblem
from postal.imports.ports import (
    ImportCache,
    ImportConflict,
    ImportInvalidations,
    ImportStore,
    ImportUnitOfWork,
    NewPost,
    PostChange,
)
from postal.posts.service import CacheTtls

__all__ = [
    "CacheStepReport",
    "ImportConflict",
    "ImportOptions",
    "ImportProgress",
    "ImportReport",
    "PostImporter",
]

DEFAULT_TTL_JITTER = 0.1  # as the read path's default (CACHE_TTL_JITTER)
# The parser is fed at most this much at a time, whatever size of chunk the source gives (an
# HTTP server may hand over what one socket read returned): it decodes and splits each piece
# whole, so its memory follows the piece's size, not the chunk's.
FEED_BYTES = 64 * 1024
DEFAULT_BATCH_CHARS = 4 * 1024 * 1024  # characters of text per batch, at most (and one row more)


@dataclass(frozen=True, slots=True)
class ImportOptions:
    skip_invalid: bool = False  # False: all or nothing
    ignore_unknown_columns: bool = False
    warm: bool = (
        False  # after the commit, fill the touched posts' keys instead of only invalidating
    )
    batch_size: int = 1000  # rows per database batch
    # ... or fewer: a batch ends once its rows' text reaches this many characters. 1,000 rows of
    # ~500 bytes are half a megabyte, but 1,000 bodies at the 1 MB limit would be a gigabyte held
    # in memory (twice: one batch is parsed while the last is written) and sent in one COPY that
    # the statement timeout (DATABASE_TIMEOUT) cuts.
    batch_chars: int = DEFAULT_BATCH_CHARS
    cache_batch_size: int = 1000  # keys per Redis round trip in the cache step
    max_reported_errors: int = 100

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_chars < 1 or self.cache_batch_size < 1:
            raise ValueError("batch_size, batch_chars and cache_batch_size must be >= 1")
        if self.max_reported_errors < 0:
            raise ValueError("max_reported_errors must not be negative")


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """Where an import is: passed to the progress callback after each chunk and each batch."""

    bytes_read: int
    rows_read: int
    errors: int  # bad rows so far


@dataclass(frozen=True, slots=True)
class ImportReport:
    committed: bool
    rows_read: int
    created: int
    updated: int
    invalid: int  # bad rows in total (errors may be cut at max_reported_errors)
    errors: tuple[RowError, ...]  # the first bad rows by line number
    seconds: float
    cache: CacheStepReport | None  # None when nothing was committed

    def to_json(self) -> dict[str, Any]:
        return {
            "committed": self.committed,
            "rows_read": self.rows_read,
            "created": self.created,
            "updated": self.updated,
            "invalid": self.invalid,
            "errors": [error.to_json() for error in self.errors],
            "errors_truncated": self.invalid > len(self.errors),
            "seconds": round(self.seconds, 6),
            "cache": None if self.cache is None else self.cache.to_json(),
        }


class _ErrorLog:
    """Counts bad rows, keeping the `limit` with the lowest line numbers (a bounded heap: row
    errors come in line order, unknown ids a batch later, out of it)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept: list[tuple[int, int, RowError]] = []  # (-line, -arrival, error): max-heap
        self._arrivals = 0
        self._last_row_line: int | None = None
        self.count = 0

    def add(self, error: RowError) -> None:
        # The parser may report several problems of one row, one after the other: one bad row.
        if error.line != self._last_row_line:
            self.count += 1
            self._last_row_line = error.line
        self._arrivals += 1
        if self._limit == 0:
            return
        entry = (-error.line, -self._arrivals, error)
        if len(self._kept) < self._limit:
            heapq.heappush(self._kept, entry)
        elif entry > self._kept[0]:  # a lower line than the highest kept
            heapq.heapreplace(self._kept, entry)

    def errors(self) -> tuple[RowError, ...]:
        return tuple(error for _line, _arrival, error in sorted(self._kept, reverse=True))


@dataclass(slots=True)
class _Run:
    """The state of one import while it runs."""

    options: ImportOptions
    reader: CsvRowReader
    errors: _ErrorLog
    touched: array[int] = field(default_factory=lambda: array("q"))
    created: int = 0
    updated: int = 0

    @property
    def writing(self) -> bool:
        """Whether rows are still to be written: always with skip_invalid, else until a bad row."""
        return self.options.skip_invalid or self.errors.count == 0

    def progress(self) -> ImportProgress:
        return ImportProgress(self.reader.bytes_read, self.reader.rows_read, self.errors.count)


class PostImporter:
    """Imports posts from CSV bytes; see the module docstring."""

    def __init__(
        self,
        store: ImportStore,
        cache: ImportCache,
        invalidator: ImportInvalidations,
        *,
        ttls: CacheTtls,
        max_body_bytes: int,
        ttl_jitter: float = DEFAULT_TTL_JITTER,
    ) -> None:
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._cache_step = ImportCacheStep(
            store, cache, invalidator, post_ttl=ttls.post, ttl_jitter=ttl_jitter
        )

    @property
    def method(self) -> str:
        """How the store writes batches ("copy" or "insert")."""
        return self._store.method

    async def run(
        self,
        chunks: AsyncIterable[bytes],
        options: ImportOptions = ImportOptions(),
        progress: Callable[[ImportProgress], None] | None = None,
    ) -> ImportReport:
        started = time.perf_counter()
        reader = CsvRowReader(
            ignore_unknown_columns=options.ignore_unknown_columns,
            max_body_bytes=self._max_body_bytes,
        )
        state = _Run(options, reader, _ErrorLog(options.max_reported_errors))
        committing = False
        try:
            async with self._store.unit_of_work() as uow:
                complete = await self._write(chunks, uow, state, progress)
                if complete and state.writing:
                    committing = True
                    await uow.commit()
                else:
                    await uow.rollback()
        except BaseException:
            # Failed or cancelled (a shutdown, a second Ctrl-C) while committing: the commit may
            # have landed all the same, and readers must not keep the old posts.
            if committing:
                await self._after_commit(state, warm=False)
            raise
        cache = await self._after_commit(state, warm=options.warm) if committing else None
        return ImportReport(
            committed=committing,
            rows_read=reader.rows_read,
            created=state.created,
            updated=state.updated,
            invalid=state.errors.count,
            errors=state.errors.errors(),
            seconds=time.perf_counter() - started,
            cache=cache,
        )

    async def _write(
        self,
        chunks: AsyncIterable[bytes],
        uow: ImportUnitOfWork,
        state: _Run,
        progress: Callable[[ImportProgress], None] | None,
    ) -> bool:
        """Read, check and write the whole file; False if its header was bad (nothing read).

        A batch is written while the next one is parsed (one write in flight at a time, in the
        one unit of work): the database works on its own core meanwhile.
        """
        writes = _OneWriteAtATime()
        batch: list[ImportRow] = []
        batch_chars = 0
        options = state.options
        try:
            async for chunk in chunks:
                for piece in _pieces(chunk):
                    for row in _good_rows(state.reader.feed(piece), state):
                        batch.append(row)
                        batch_chars += _text_size(row)
                        if len(batch) >= options.batch_size or batch_chars >= options.batch_chars:
                            await writes.submit(self._flush(uow, batch, state))
                            batch, batch_chars = [], 0
                if progress is not None:
                    progress(state.progress())
            batch += _good_rows(state.reader.close(), state)
            await writes.submit(self._flush(uow, batch, state))
            await writes.wait()
        except CsvHeaderError as exc:
            for error in exc.errors:
                state.errors.add(error)
            return False
        finally:
            await writes.cancel()  # on the way out with an error: nothing may use the transaction
        if progress is not None:
            progress(state.progress())
        return True

    async def _flush(self, uow: ImportUnitOfWork, batch: Sequence[ImportRow], state: _Run) -> None:
        """Check one batch's ids against the database and, if still writing, write it."""
        if not batch:
            return
        changes = [row for row in batch if row.post_id is not None]
        current: dict[int, int] = {}
        if changes:
            ids = [row.post_id for row in changes if row.post_id is not None]
            current = await uow.current_versions(ids, lock=state.writing)
            for row in changes:
                if row.post_id not in current:
                    state.errors.add(_unknown_id(row))
        if not state.writing:
            return  # all or nothing, and a bad row was seen: only checking from now on
        now = datetime.now(UTC)
        new = [NewPost(row.content, row.created_at or now) for row in batch if row.post_id is None]
        known = [
            PostChange(row.post_id, row.content)
            for row in changes
            if row.post_id is not None and row.post_id in current
        ]
        created_ids = await uow.create(new)
        await uow.update(known, current, now)
        state.touched.extend(created_ids)
        state.touched.extend(change.post_id for change in known)
        state.created += len(created_ids)
        state.updated += len(known)

    async def _after_commit(self, state: _Run, *, warm: bool) -> CacheStepReport:
        """The cache step, shielded: once the database has committed, a cancelled caller must not
        take the invalidation down with it. Nothing written, nothing to invalidate."""
        if not state.touched:
            return CacheStepReport(keys=0, pipelines=0, seconds=0.0, warmed=0, pending=False)
        batch_size = state.options.cache_batch_size
        step = self._cache_step.run(state.touched, warm=warm, batch_size=batch_size)
        return await asyncio.shield(asyncio.ensure_future(step))


class _OneWriteAtATime:
    """At most one batch write in flight: `submit` waits for the previous one, then starts the
    next in a task of its own; the write's errors surface at the next `submit` or `wait`."""

    def __init__(self) -> None:
        self._write: asyncio.Task[None] | None = None

    async def submit(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            await self.wait()
        except BaseException:
            write.close()  # never started
            raise
        self._write = asyncio.ensure_future(write)

    async def wait(self) -> None:
        # Awaited directly, the task is cancelled with its awaiter.
        write, self._write = self._write, None
        if write is not None:
            await write

    async def cancel(self) -> None:
        """Stop the write in flight, if any: on the way out with an error, which is the one to
        propagate (the write's own, if it had one, would only repeat or follow from it)."""
        write, self._write = self._write, None
        if write is None:
            return
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await write


def _pieces(chunk: bytes) -> Iterator[bytes]:
    """`chunk` in slices of at most FEED_BYTES (itself when it is no larger)."""
    if len(chunk) <= FEED_BYTES:
        yield chunk
        return
    view = memoryview(chunk)
    for start in range(0, len(chunk), FEED_BYTES):
        yield bytes(view[start : start + FEED_BYTES])


def _good_rows(parsed: Sequence[ImportRow | RowError], state: _Run) -> list[ImportRow]:
    """The rows among `parsed`; the errors go to the log."""
    rows: list[ImportRow] = []
    for item in parsed:
        if isinstance(item, RowError):
            state.errors.add(item)
        else:
            rows.append(item)
    return rows


def _text_size(row: ImportRow) -> int:
    """The row's text in characters: what its batch holds in memory and sends, about."""
    content = row.content
    tags = sum(map(len, content.tags))
    return len(content.title) + len(content.body) + len(content.author) + tags


def _unknown_id(row: ImportRow) -> RowError:
    return RowError(
        line=row.line,
        column="id",
        reason=RowProblem.UNKNOWN_ID,
        message=f"no post with id {row.post_id}: an id must name an existing post",
    )
