"""What the posts service needs from outside, said in its own terms: where posts are kept, and the
cache it reads through and invalidates.

The service codes against these Protocols only. `storage.SqlPostRepository` is the repository,
and `postal.cache`'s `ReadThrough` and `Invalidator` are the cache (they satisfy these
structurally: neither knows of posts); the unit tests pass the in-memory fakes of
`tests/support/fakes.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from postal.cache import GuardedKey, Loader, Profile, ReadThroughStats, Timeout
from postal.posts.models import (
    NO_FILTER,
    ListFilter,
    Post,
    PostContent,
    PostVersion,
    VersionSummary,
)

T = TypeVar("T")


class PostRepository(Protocol):
    """Where posts and their versions are kept. Every method is atomic on its own.

    Errors: `PostNotFound`, `VersionNotFound`, `VersionConflict`; `DatabaseUnavailable` when the
    database fails (from a write: it may have landed), `NothingWritten` when it failed before a
    write's COMMIT was sent (it cannot have landed).
    """

    async def get(self, post_id: int) -> Post | None: ...

    async def list_page(
        self, *, limit: int, before_id: int | None = None, matching: ListFilter = NO_FILTER
    ) -> list[Post]:
        """Newest first: at most `limit` posts with `id < before_id` (all, when None), among
        those `matching` the filter (by that author, with that tag)."""
        ...

    async def create(self, content: PostContent, *, created_at: datetime | None = None) -> Post:
        """Version 1; `created_at` (timezone-aware) for imports, else now."""
        ...

    async def update(
        self, post_id: int, content: PostContent, *, expected_version: int | None
    ) -> Post: ...

    async def delete(self, post_id: int, *, expected_version: int | None) -> None: ...

    async def versions(self, post_id: int) -> list[PostVersion]:
        """Every version, oldest first."""
        ...

    async def version_page(
        self, post_id: int, *, limit: int, after_version: int | None = None
    ) -> list[VersionSummary]:
        """Oldest first, without bodies: at most `limit` versions numbered above
        `after_version` (all, when None). `PostNotFound` when there is no such post; an empty
        list past its last version."""
        ...

    async def version(self, post_id: int, version: int) -> PostVersion: ...

    async def restore(self, post_id: int, version: int, *, expected_version: int | None) -> Post:
        """Version `version`'s content, current again as a new version."""
        ...


class CachedReads(Protocol):
    """The read-through the service reads by (`postal.cache.ReadThrough`)."""

    async def get(self, key: GuardedKey, load: Loader) -> bytes:
        """The payload of `key`: from the cache, or from `load`, which returns the payload and
        how long it may be cached, in seconds. Only `load`'s own exceptions propagate: a cache
        error never does."""
        ...


class CacheInvalidations(Protocol):
    """Where the service sends its invalidations after a write (`postal.cache.Invalidator`)."""

    async def invalidate(self, keys: Sequence[GuardedKey], generations: Sequence[str] = ()) -> bool:
        """Bump the generations of `keys` and delete them; bump the bare counters
        `generations`. True when the cache took it; False when it is pending (retried in the
        background, and meanwhile bypassed by this process's reads). Never raises a cache
        error."""
        ...


class PostIds(Protocol):
    """Post ids without their posts, for the operators' cache commands (`cache_admin`)."""

    async def ids_page(self, *, limit: int, before_id: int | None = None) -> list[int]:
        """Newest first: at most `limit` ids below `before_id` (from the newest, when None)."""
        ...

    async def count(self) -> int:
        """How many posts there are."""
        ...


class WarmingReads(Protocol):
    """The read-through's side the warming watches (`postal.cache.ReadThrough`)."""

    def stats(self) -> ReadThroughStats: ...

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the loads in flight and their fills."""
        ...


class BatchInvalidations(Protocol):
    """Invalidations of many keys in one round trip, through the invalidator: the cache
    client's batch form (`CacheClient.invalidate_many`) sent by `Invalidator.invalidate_with`."""

    async def invalidate_with(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str],
        send: Callable[[], Awaitable[T]],
    ) -> T | None:
        """`send()`'s result, or None when it raised a cache error: then `keys` and
        `generations` are pending (retried in the background)."""
        ...

    def is_pending(self, key: GuardedKey) -> bool:
        """Whether an invalidation of `key`, or of its generation, has not reached the cache."""
        ...


class CacheBatches(Protocol):
    """The cache client's batch invalidation (`postal.cache.CacheClient`)."""

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
        `generations`, in one round trip."""
        ...
