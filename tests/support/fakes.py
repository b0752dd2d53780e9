"""In-memory fakes of the use cases' ports, for unit tests: no I/O, the state in plain dicts.

- `FakePostRepository`: posts' `PostRepository` (`posts.ports`), with the SQL one's errors;
  `fail_next_write` makes the next write fail as a database can, before or after it landed.
- `FakeImportStore`: imports' `ImportStore` (`imports.ports`). Each `FakeImportUnitOfWork` it
  gives keeps its writes to itself until `commit()`, then puts them in a `FakePostRepository`,
  so a test can import, then read through the service. Failures are set on the store, since the
  importer asks for its unit of work only once it runs.
- `InMemoryCache`: the cache as both use cases see it: posts' `CachedReads` and
  `CacheInvalidations`, imports' `ImportCache` and `ImportInvalidations`. Values are stamped
  with their key's generation and an invalidation bumps it, as the generation guard does in
  Redis; an invalidation that fails (`down`) leaves its keys pending, and pending keys are read
  from the loader, as the real `Invalidator` and `ReadThrough` arrange between them.

Tests read the public state (`posts`, `units`, `invalidations`, ...) and never a private one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, TypeVar

from postal.cache import (
    TUNED,
    USE_DEFAULT,
    CacheError,
    CacheUnavailable,
    GuardedFill,
    GuardedKey,
    Loader,
    Profile,
    Timeout,
)
from postal.imports.ports import ImportConflict, NewPost, PostChange
from postal.posts.errors import PostNotFound, VersionConflict, VersionNotFound
from postal.posts.models import (
    NO_FILTER,
    ListFilter,
    Post,
    PostContent,
    PostVersion,
    VersionSummary,
)

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _with_content(post: Post, content: PostContent, version: int, at: datetime) -> Post:
    return replace(
        post,
        title=content.title,
        body=content.body,
        author=content.author,
        tags=content.tags,
        version=version,
        updated_at=at,
    )


# -- the posts repository --------------------------------------------------------------------------


class FakePostRepository:
    """`PostRepository` in dicts: ids from a counter that never goes back, as a sequence's."""

    def __init__(self, clock: Callable[[], datetime] = _now) -> None:
        self.posts: dict[int, Post] = {}
        self.history: dict[int, list[PostVersion]] = {}
        self.loads = 0  # get() and list_page() calls: a read the cache did not answer
        self.writes = 0  # write calls, failed ones included
        self._clock = clock
        self._last_id = 0
        self._failure: tuple[Exception, bool] | None = None

    def __repr__(self) -> str:
        return f"<FakePostRepository posts={len(self.posts)} writes={self.writes}>"

    def fail_next_write(self, error: Exception, *, landed: bool = False) -> None:
        """The next write raises `error`; with `landed`, after taking effect (the COMMIT reached
        the database, its answer did not come back)."""
        self._failure = (error, landed)

    def take_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def save(self, post: Post) -> None:
        """Make `post` current, and add its version row (the content as it became)."""
        self.posts[post.id] = post
        row = PostVersion(
            post.id, post.version, post.title, post.body, post.author, post.tags, post.updated_at
        )
        self.history.setdefault(post.id, []).append(row)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, post_id: int) -> Post | None:
        self.loads += 1
        return self.posts.get(post_id)

    async def list_page(
        self, *, limit: int, before_id: int | None = None, matching: ListFilter = NO_FILTER
    ) -> list[Post]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.loads += 1
        ids = [
            post_id
            for post_id in sorted(self.posts, reverse=True)
            if matching.author in (None, self.posts[post_id].author)
            and (matching.tag is None or matching.tag in self.posts[post_id].tags)
        ]
        if before_id is not None:
            ids = [post_id for post_id in ids if post_id < before_id]
        return [self.posts[post_id] for post_id in ids[:limit]]

    async def versions(self, post_id: int) -> list[PostVersion]:
        if post_id not in self.history:
            raise PostNotFound(post_id)
        return list(self.history[post_id])

    async def version_page(
        self, post_id: int, *, limit: int, after_version: int | None = None
    ) -> list[VersionSummary]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        rows = [
            VersionSummary(
                row.post_id, row.version, row.title, row.author, row.tags, row.created_at
            )
            for row in await self.versions(post_id)
            if after_version is None or row.version > after_version
        ]
        return rows[:limit]

    async def version(self, post_id: int, version: int) -> PostVersion:
        for row in await self.versions(post_id):
            if row.version == version:
                return row
        raise VersionNotFound(post_id, version)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, content: PostContent, *, created_at: datetime | None = None) -> Post:
        def apply() -> Post:
            at = self._clock() if created_at is None else created_at
            post = Post(
                self.take_id(), content.title, content.body, content.author, content.tags, 1, at, at
            )
            self.save(post)
            return post

        return self._write(apply)

    async def update(
        self, post_id: int, content: PostContent, *, expected_version: int | None
    ) -> Post:
        return self._write(lambda: self._new_version(post_id, content, expected_version))

    async def restore(self, post_id: int, version: int, *, expected_version: int | None) -> Post:
        content = (await self.version(post_id, version)).content
        return self._write(lambda: self._new_version(post_id, content, expected_version))

    async def delete(self, post_id: int, *, expected_version: int | None) -> None:
        def apply() -> None:
            self._current(post_id, expected_version)
            del self.posts[post_id]
            del self.history[post_id]

        self._write(apply)

    def _write(self, apply: Callable[[], T]) -> T:
        self.writes += 1
        failure, self._failure = self._failure, None
        if failure is not None and not failure[1]:
            raise failure[0]
        result = apply()
        if failure is not None:
            raise failure[0]
        return result

    def _current(self, post_id: int, expected_version: int | None) -> Post:
        post = self.posts.get(post_id)
        if post is None:
            raise PostNotFound(post_id)
        if expected_version is not None and post.version != expected_version:
            raise VersionConflict(post_id, expected_version, post.version)
        return post

    def _new_version(self, post_id: int, content: PostContent, expected: int | None) -> Post:
        current = self._current(post_id, expected)
        post = _with_content(current, content, current.version + 1, self._clock())
        self.save(post)
        return post


# -- the import's store and unit of work -----------------------------------------------------------


class FakeImportStore:
    """`ImportStore` over a `FakePostRepository`; `units` lists every unit of work it gave."""

    method = "memory"

    def __init__(self, repository: FakePostRepository) -> None:
        self.repository = repository
        self.units: list[FakeImportUnitOfWork] = []
        self.reads: list[list[int]] = []  # read_posts() calls: the ids asked for
        # Failures for the next unit of work, each used once:
        self.lock_conflict: ImportConflict | None = None  # raised by current_versions(lock=True)
        self.commit_failure: tuple[BaseException, bool] | None = None  # (error, landed first)
        self.commit_gate: asyncio.Event | None = None  # commit() waits for it once applied
        self.read_error: Exception | None = None  # raised by every read_posts()

    def __repr__(self) -> str:
        return f"<FakeImportStore units={len(self.units)}>"

    def unit_of_work(self) -> FakeImportUnitOfWork:
        unit = FakeImportUnitOfWork(self)
        self.units.append(unit)
        return unit

    async def read_posts(self, post_ids: Sequence[int]) -> list[Post]:
        if self.read_error is not None:
            raise self.read_error
        self.reads.append(list(post_ids))
        posts = self.repository.posts
        return [posts[post_id] for post_id in post_ids if post_id in posts]


class FakeImportUnitOfWork:
    """One import's transaction: `written` is held back until `commit()`. `state` goes from
    "new" to "open", then "committed" or "rolled back"."""

    def __init__(self, store: FakeImportStore) -> None:
        self._store = store
        self._repository = store.repository
        self.state = "new"
        self.written: list[Post] = []  # every version written, in order
        self.locked: list[int] = []  # ids read under a row lock
        self.unlocked: list[int] = []  # ids read without one (checked, not to be written)
        self.creates: list[int] = []  # the size of each create() call's batch

    def __repr__(self) -> str:
        return f"<FakeImportUnitOfWork {self.state} written={len(self.written)}>"

    async def __aenter__(self) -> Self:
        if self.state != "new":
            raise RuntimeError("a unit of work is entered once")
        self.state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.state == "open":
            self._end("rolled back")

    async def current_versions(self, post_ids: Sequence[int], *, lock: bool) -> dict[int, int]:
        self._check_open()
        (self.locked if lock else self.unlocked).extend(post_ids)
        if lock and self._store.lock_conflict is not None:
            conflict, self._store.lock_conflict = self._store.lock_conflict, None
            raise conflict
        found: dict[int, int] = {}
        for post_id in post_ids:
            post = self._latest(post_id)
            if post is not None:
                found[post_id] = post.version
        return found

    async def create(self, new: Sequence[NewPost]) -> list[int]:
        self._check_open()
        ids = []
        for item in new:
            content, at = item.content, item.created_at
            post = Post(
                self._repository.take_id(),
                content.title,
                content.body,
                content.author,
                content.tags,
                1,
                at,
                at,
            )
            self.written.append(post)
            ids.append(post.id)
        self.creates.append(len(new))
        return ids

    async def update(
        self, changes: Sequence[PostChange], current: Mapping[int, int], at: datetime
    ) -> None:
        self._check_open()
        versions = dict(current)
        for change in changes:
            base = self._latest(change.post_id)
            assert base is not None, "update() of a post current_versions() did not find"
            versions[change.post_id] += 1
            self.written.append(_with_content(base, change.content, versions[change.post_id], at))

    async def commit(self) -> None:
        self._check_open()
        failure, self._store.commit_failure = self._store.commit_failure, None
        if failure is not None and not failure[1]:
            raise failure[0]
        for post in self.written:
            self._repository.save(post)
        self.state = "committed"
        if failure is not None:
            raise failure[0]
        gate, self._store.commit_gate = self._store.commit_gate, None
        if gate is not None:
            await gate.wait()

    async def rollback(self) -> None:
        self._check_open()
        self._end("rolled back")

    def _end(self, state: str) -> None:
        self.state = state
        self.written.clear()

    def _check_open(self) -> None:
        if self.state != "open":
            raise RuntimeError(f"the unit of work is {self.state}, not open")

    def _latest(self, post_id: int) -> Post | None:
        for post in reversed(self.written):
            if post.id == post_id:
                return post
        return self._repository.posts.get(post_id)


# -- the cache -------------------------------------------------------------------------------------


class InMemoryCache:
    """The cache both use cases talk to, in dicts; see the module docstring.

    `invalidations` lists each invalidation that landed: (the keys, the bare counters bumped).
    With `down`, every round trip raises `CacheUnavailable`: invalidations become pending and
    reads go to the loader.
    """

    profile: Profile = TUNED  # the batch deadlines are read off its SET deadline

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, bytes]] = {}  # key: (generation stamped, payload)
        self.generations: dict[str, int] = {}  # generation keys and bare counters
        self.pending_keys: set[GuardedKey] = set()
        self.pending_generations: set[str] = set()
        self.invalidations: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.fills: list[str] = []  # keys written by fill_guarded_many, in order
        self.round_trips = 0
        self.down = False

    def __repr__(self) -> str:
        pending = len(self.pending_keys) + len(self.pending_generations)
        return f"<InMemoryCache values={len(self.values)} pending={pending} down={self.down}>"

    def generation(self, key: str) -> int:
        return self.generations.get(key, 0)

    def cached(self, key: GuardedKey) -> bytes | None:
        """The payload a read would hit now, if any."""
        stored = self.values.get(key.key)
        if stored is None or stored[0] != self.generation(key.generation_key):
            return None
        return stored[1]

    # -- posts' CachedReads: a read-through that fills at once, not in the background ---------

    async def get(self, key: GuardedKey, load: Loader) -> bytes:
        if self.is_pending(key) or self.down:
            payload, _ttl = await load()
            return payload
        hit = self.cached(key)
        if hit is not None:
            return hit
        generation = self.generation(key.generation_key)
        payload, ttl = await load()
        if ttl > 0 and self.generation(key.generation_key) == generation:  # the guard
            self.values[key.key] = (generation, payload)
        return payload

    # -- posts' CacheInvalidations and imports' ImportInvalidations ----------------------------

    async def invalidate(self, keys: Sequence[GuardedKey], generations: Sequence[str] = ()) -> bool:
        async def send() -> bool:
            await self.invalidate_many(keys, generations)
            return True

        return await self.invalidate_with(keys, generations, send) is not None

    async def invalidate_with(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str],
        send: Callable[[], Awaitable[T]],
    ) -> T | None:
        try:
            result = await send()
        except CacheError:
            self.pending_keys.update(keys)
            self.pending_generations.update(generations)
            return None
        self.pending_keys.difference_update(keys)
        self.pending_generations.difference_update(generations)
        return result

    def is_pending(self, key: GuardedKey) -> bool:
        return key in self.pending_keys or key.generation_key in self.pending_generations

    # -- imports' ImportCache --------------------------------------------------------------------

    async def invalidate_many(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> list[int]:
        self._round_trip()
        new = []
        for key in keys:
            new.append(self._bump(key.generation_key))
            self.values.pop(key.key, None)
        for counter in generations:
            self._bump(counter)
        self.invalidations.append((tuple(key.key for key in keys), tuple(generations)))
        return new

    async def fill_guarded_many(
        self, fills: Sequence[GuardedFill], *, timeout: Timeout = USE_DEFAULT
    ) -> int:
        self._round_trip()
        written = 0
        for fill in fills:
            if self.generation(fill.key.generation_key) == fill.generation:
                self.values[fill.key.key] = (fill.generation, fill.payload)
                self.fills.append(fill.key.key)
                written += 1
        return written

    def _round_trip(self) -> None:
        self.round_trips += 1
        if self.down:
            raise CacheUnavailable("the fake cache is down")

    def _bump(self, counter: str) -> int:
        self.generations[counter] = self.generation(counter) + 1
        return self.generations[counter]
