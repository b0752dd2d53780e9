"""The posts use cases: read through the cache with a database fallback; write, then invalidate.

Reads (`read_post`, `read_page`) go through `ReadThrough`: a hit returns the cached entry; a miss,
a cache error or an open breaker loads from the database, and the fill happens in the
background. A read fails only when the database does (`DatabaseUnavailable`).

Writes commit in the database first, then invalidate the post's key and bump the list pages'
generation. A failed invalidation never fails the write: the `Invalidator` retries it in the
background, and until it lands this process reads that post from the database. The
invalidation is shielded from the request's cancellation (a client gone, a shutdown's deadline),
and it is attempted too when the database fails at the commit, which may have landed, or when
the request is cancelled during the write. A database that failed before the COMMIT was sent
(`NothingWritten`: refused connections during an outage, say) cannot have written anything: the
cache is left alone, so that its entries keep answering reads while the database is down.

List pages are cached under their filter and their cursor's position, and cursors are signed
(`cursors.py`) for their filter, so the pages that can be cached are the ones this deployment's
cursors lead to, each at most `max_page_bytes` (a page over it, one post larger than a page, is
answered and not cached). A filtered page is cached only when it shows a post (`_page_ttl`).
Each page carries an ETag made of its bytes, stored with it, so a hit answers If-None-Match
without hashing anything.
Pages of a post's versions carry no bodies and are read from the database, as history is read
rarely; their cursors are signed the same way.

Entries are read back defensively: bytes in the cache that are not an entry (a foreign writer
on a shared Redis, a format from another version during a rolling deploy) are treated as a
miss, invalidated, and answered from the database; they never fail the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from postal.cache import GuardedKey, Loader
from postal.posts.cache_keys import LIST_GENERATION, page_key, post_key
from postal.posts.cursors import Cursors, list_kind, versions_kind
from postal.posts.entries import NOT_FOUND, Entry, decode_entry, encode_entry
from postal.posts.errors import DatabaseUnavailable, InvalidCursor, NothingWritten
from postal.posts.models import NO_FILTER, ListFilter, Post, PostContent, PostVersion
from postal.posts.ports import CachedReads, CacheInvalidations, PostRepository
from postal.posts.representation import (
    etag,
    items_within,
    page_etag,
    page_from_items,
    post_json,
    versions_page_json,
)

logger = logging.getLogger("postal.posts")

T = TypeVar("T")

# A write that ends in one of these may have committed before it ended (the database failed, or
# a shutdown cancelled the request, at the COMMIT): its invalidation is sent all the same. Except
# `NothingWritten`, caught first: the database failed before the COMMIT was sent.
COMMIT_MAY_HAVE_LANDED = (DatabaseUnavailable, asyncio.CancelledError)
DEFAULT_MAX_PAGE_BYTES = 1_048_576  # POSTAL_MAX_PAGE_BYTES's default


@dataclass(frozen=True, slots=True)
class CacheTtls:
    """How long entries live in the cache, in seconds (jitter is added by the read path)."""

    post: float = 300.0
    page: float = 30.0
    not_found: float = 5.0


class PostService:
    def __init__(
        self,
        repository: PostRepository,
        reads: CachedReads,
        invalidator: CacheInvalidations,
        ttls: CacheTtls = CacheTtls(),
        *,
        cursors: Cursors,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
    ) -> None:
        self._repository = repository
        self._reads = reads
        self._invalidator = invalidator
        self._ttls = ttls
        self._cursors = cursors
        self._max_page_bytes = max_page_bytes

    # -- reads through the cache ---------------------------------------------------------------

    async def read_post(self, post_id: int) -> Entry:
        """The post as its response: 200 with ETag and JSON body, or the 404 entry."""

        async def load() -> tuple[bytes, float]:
            post = await self._repository.get(post_id)
            if post is None:
                return encode_entry(NOT_FOUND), self._ttls.not_found
            entry = Entry(200, etag(post.version), post_json(post))
            return encode_entry(entry), self._ttls.post

        return await self._read(post_key(post_id), load)

    async def read_page(
        self, *, limit: int, cursor: str | None = None, matching: ListFilter = NO_FILTER
    ) -> Entry:
        """One page of posts, newest first, as its entry (200, the page's ETag, its JSON body):
        at most `limit` posts, fewer when they would take the page over `max_page_bytes`; only
        those `matching` the filter. `cursor`: a `next_cursor` of this filter's pages;
        `InvalidCursor` for any other, before anything is read or cached."""
        kind = list_kind(matching)
        before_id = None if cursor is None else self._position(kind, cursor)

        async def load() -> tuple[bytes, float]:
            # One more than asked tells whether a next page exists, so the last page says so.
            found = await self._repository.list_page(
                limit=limit + 1, before_id=before_id, matching=matching
            )
            items = items_within(found[:limit], self._max_page_bytes)
            more = len(found) > len(items)
            next_cursor = self._cursors.encode(kind, found[len(items) - 1].id) if more else None
            body = page_from_items(items, next_cursor)
            ttl = self._page_ttl(body, len(items), matching)
            return encode_entry(Entry(200, page_etag(body), body)), ttl

        entry = await self._read(page_key(limit, before_id, matching), load)
        if entry.etag is None:  # cached by a release whose pages had no ETag (a rolling deploy)
            return Entry(200, page_etag(entry.body), entry.body)
        return entry

    def _page_ttl(self, body: bytes, shown: int, matching: ListFilter) -> float:
        """How long a page is cached; 0: not at all. A page over `max_page_bytes` is not. Nor is
        a filtered page that shows no post: filter values are the client's to choose, and an
        empty page for each made-up author would be a key each. So the filtered pages cached are
        those of authors and tags some post has, bounded by the data, as cursors bound the
        positions (an empty page costs the database one index probe)."""
        if len(body) > self._max_page_bytes:
            return 0.0
        if shown == 0 and not matching.is_empty:
            return 0.0
        return self._ttls.page

    def _position(self, kind: str, cursor: str) -> int:
        position = self._cursors.decode(kind, cursor)
        if position is None:
            raise InvalidCursor()
        return position

    async def _read(self, key: GuardedKey, load: Loader) -> Entry:
        payload = await self._reads.get(key, load)
        try:
            return decode_entry(payload)
        except ValueError:
            logger.warning(
                "not a cache entry under %s: invalidating it, reading the database", key.key
            )
            await self._invalidator.invalidate([key])
            payload, _ttl = await load()
            return decode_entry(payload)

    # -- reads straight from the database (history is read rarely) ------------------------------

    async def version_page(self, post_id: int, *, limit: int, cursor: str | None = None) -> bytes:
        """One page of a post's versions, oldest first, without their bodies, as its JSON
        body. `PostNotFound` when there is no such post; `InvalidCursor` as `read_page`."""
        kind = versions_kind(post_id)
        after = None if cursor is None else self._position(kind, cursor)
        found = await self._repository.version_page(post_id, limit=limit + 1, after_version=after)
        page = found[:limit]
        next_cursor = self._cursors.encode(kind, page[-1].version) if len(found) > limit else None
        return versions_page_json(post_id, page, next_cursor)

    async def version(self, post_id: int, version: int) -> PostVersion:
        return await self._repository.version(post_id, version)

    # -- writes: commit, then invalidate -------------------------------------------------------

    async def create(self, content: PostContent) -> Post:
        try:
            post = await self._repository.create(content)
        except NothingWritten:
            raise  # nothing to invalidate: the cache's entries are still right
        except COMMIT_MAY_HAVE_LANDED:
            await self._invalidate(None)  # the commit may have landed: pages may show it
            raise
        await self._invalidate(post.id)  # a negative entry may be cached for this id
        return post

    async def update(self, post_id: int, content: PostContent, *, expected: int | None) -> Post:
        write = self._repository.update(post_id, content, expected_version=expected)
        return await self._then_invalidate(post_id, write)

    async def delete(self, post_id: int, *, expected: int | None) -> None:
        write = self._repository.delete(post_id, expected_version=expected)
        await self._then_invalidate(post_id, write)

    async def restore(self, post_id: int, version: int, *, expected: int | None) -> Post:
        write = self._repository.restore(post_id, version, expected_version=expected)
        return await self._then_invalidate(post_id, write)

    async def _then_invalidate(self, post_id: int, write: Awaitable[T]) -> T:
        """Run a write of an existing post, then invalidate it; also when the database failed
        at the commit, or the request was cancelled during it: either may have landed. Not when
        the database failed before the commit: the cached entry is still right."""
        try:
            result = await write
        except NothingWritten:
            raise
        except COMMIT_MAY_HAVE_LANDED:
            await self._invalidate(post_id)
            raise
        await self._invalidate(post_id)
        return result

    async def _invalidate(self, post_id: int | None) -> None:
        """The post's key (if known) and every list page. Never raises a cache error: a failure
        is queued for retry and bypassed by this process's reads. Shielded: once the database
        has committed, a cancelled request must not take the invalidation down with it."""
        keys = [] if post_id is None else [post_key(post_id)]
        invalidation = self._invalidator.invalidate(keys, generations=[LIST_GENERATION])
        await asyncio.shield(asyncio.ensure_future(invalidation))
