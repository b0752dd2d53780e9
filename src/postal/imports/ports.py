"""What the import needs from outside, in its own terms; `storage` and `postal.cache` supply it.

- `ImportStore`: where an import writes (`storage.SqlImportStore`). `unit_of_work()` gives a new
  `ImportUnitOfWork` for each import (imports may run at once), and `read_posts` reads posts
  back after the commit, to warm the cache with.
- `ImportUnitOfWork`: one import's transaction, as an async context manager. Inside it the
  importer checks ids and writes its batches, then ends it with `commit()` or `rollback()`, as
  it decides. The transaction begins with the first batch, not on entering the block: until an
  import has rows to write it holds no connection, no transaction and no lock. Leaving the block
  without either rolls back, and so does leaving it with an exception, cancellation included: an
  interrupted import leaves the database as it was. A database that fails or does not answer, at
  any point until the block has been left, comes out of it as `DatabaseUnavailable`.
- `ImportCache` and `ImportInvalidations`: the parts of `postal.cache`'s `CacheClient` and
  `Invalidator` that the cache step uses after the commit (they satisfy these structurally).

The unit tests pass the in-memory fakes of `tests/support/fakes.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, TypeVar

from postal.cache import GuardedFill, GuardedKey, Profile, Timeout
from postal.posts.models import Post, PostContent

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewPost:
    content: PostContent
    created_at: datetime  # timezone-aware; also its updated_at and its version 1's created_at


@dataclass(frozen=True, slots=True)
class PostChange:
    """New content for an existing post: it becomes the post's next version."""

    post_id: int
    content: PostContent


class ImportConflict(Exception):
    """Another transaction (another import) and this one each held posts the other wanted; the
    database failed this one. Its transaction is lost: the caller rolls back."""


class ImportUnitOfWork(Protocol):
    """One import's transaction; see the module docstring."""

    async def __aenter__(self) -> Self:
        """Enter the block; the database is not asked anything until the first statement,
        which begins the transaction."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Roll back unless `commit()` or `rollback()` ended the transaction already."""
        ...

    async def current_versions(self, post_ids: Sequence[int], *, lock: bool) -> dict[int, int]:
        """The current version of each of `post_ids` that exists; absent ids are not posts.

        `lock`: lock those rows until the transaction ends, as a batch that updates them
        needs. Raises `ImportConflict` when the database broke a deadlock by failing this
        transaction (two imports locking the same posts in opposite orders).
        """
        ...

    async def create(self, new: Sequence[NewPost]) -> list[int]:
        """Add `new` as version 1 each, with their version rows; their ids, in order."""
        ...

    async def update(
        self, changes: Sequence[PostChange], current: Mapping[int, int], at: datetime
    ) -> None:
        """Make each change its post's next version, counting from `current` (as read under
        lock by `current_versions`): the same post twice gets two consecutive versions. `at`
        is its updated_at and the version row's created_at; created_at stays as it was."""
        ...

    async def commit(self) -> None:
        """Commit what was written; nothing if no statement began the transaction."""
        ...

    async def rollback(self) -> None: ...


class ImportStore(Protocol):
    """Where imports write, and read back what they wrote."""

    @property
    def method(self) -> str:
        """How batches are written ("copy" or "insert"), for the reports."""
        ...

    def unit_of_work(self) -> ImportUnitOfWork:
        """A new unit of work, for one import; not begun until entered."""
        ...

    async def read_posts(self, post_ids: Sequence[int]) -> list[Post]:
        """The posts among `post_ids` that exist, as committed, in no particular order."""
        ...


class ImportCache(Protocol):
    """The cache client's batch forms, on the write role (`postal.cache.CacheClient`)."""

    @property
    def profile(self) -> Profile: ...

    async def invalidate_many(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = ...,
    ) -> list[int]:
        """Bump the generations of `keys` and delete them, bump the bare counters
        `generations`, in one round trip; the new generation of each of `keys`."""
        ...

    async def fill_guarded_many(
        self, fills: Sequence[GuardedFill], *, timeout: Timeout = ...
    ) -> int:
        """Write each fill whose key is still at the generation it quotes; how many were."""
        ...


class ImportInvalidations(Protocol):
    """The invalidator the cache step sends through (`postal.cache.Invalidator`)."""

    async def invalidate_with(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str],
        send: Callable[[], Awaitable[T]],
    ) -> T | None:
        """`send()`'s result, or None when it raised a cache error: then `keys` and
        `generations` are pending (retried in the background, bypassed by this process's
        reads)."""
        ...

    def is_pending(self, key: GuardedKey) -> bool:
        """Whether an invalidation of `key` has not reached the cache yet."""
        ...
