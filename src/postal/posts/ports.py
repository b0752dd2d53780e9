"""What the posts service needs from outside, said in its own terms: where posts are kept, and the
cache it reads through and invalidates.

The service codes against these Protocols only. `storage.SqlPostRepository` is the repository,
and `postal.cache`'s `ReadThrough` and `Invalidator` are the cache (they satisfy these
structurally: neither knows of posts); the unit tests pass the in-memory fakes of
`tests/support/fakes.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from postal.cache import GuardedKey, Loader
from postal.posts.models import Post, PostContent, PostVersion, VersionSummary


class PostRepository(Protocol):
    """Where posts and their versions are kept. Every method is atomic on its own.

    Errors: `PostNotFound`, `VersionNotFound`, `VersionConflict`; `DatabaseUnavailable` when the
    database fails (from a write: it may have landed), `NothingWritten` when it failed before a
    write's COMMIT was sent (it cannot have landed).
    """

    async def get(self, post_id: int) -> Post | None: ...

    async def list_page(self, *, limit: int, before_id: int | None = None) -> list[Post]:
        """Newest first: at most `limit` posts with `id < before_id` (all, when None)."""
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
