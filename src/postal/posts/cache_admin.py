"""The operators' cache commands: warm posts through the read path; invalidate posts, or all.

Both go the service's own way, so they keep its promises:

- **Warming** reads each post as a request would (`PostService.read_post`, through the
  `ReadThrough`): a post already cached is left alone; a miss loads from the database and fills
  with the guarded fill, quoting the generation read before the load, so a write that lands
  meanwhile makes the fill refuse rather than cache what it replaced. Ids go in batches of
  `warm_batch`, at most `concurrency` reads at once, and each batch's fills are awaited before
  the next batch starts: what is held in memory is one batch's entries at most.
- **Invalidating** sends the post keys (generation bumped, value deleted) and the list pages'
  generation, as a write does, through the `Invalidator` (`invalidate_with`, with the cache's
  batch form: one script call per `invalidate_batch` keys). A batch Redis does not take is
  left to the invalidator's retries, and the next batch waits for it to land (up to `wait`
  seconds; then the command stops there): the pending table stays one batch long, however
  many posts there are.
- **Invalidating everything** walks the database's ids newest first, by keyset (ids only, a
  batch at a time, never a post body), and invalidates each batch as above, the list pages'
  generation with the first. It never SCANs Redis, and never holds more than one batch of ids.
  Posts created meanwhile are above the first batch, and their own writes invalidated them.
  What it cannot reach: entries of posts that are no longer in the database (deleted behind
  Postal's back, or a database restored from an older backup) expire with POST_CACHE_TTL. A
  coarse invalidation that needs no keys (a global epoch) would cover those too; the cache has
  none yet.

"Top" for warming is the newest posts (`newest`): the first pages of the list, and what
readers most often ask for in a posts service. Postal keeps no read counts per post to do
better.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from postal.cache import GuardedKey, ReadThroughStats, Timeout
from postal.posts.cache_keys import LIST_GENERATION, page_key, post_key
from postal.posts.errors import DatabaseUnavailable
from postal.posts.ports import BatchInvalidations, CacheBatches, PostIds, WarmingReads
from postal.posts.service import PostService

WARM_BATCH = 200  # ids read per step; their entries (~1 KB each, 1 MB at most) are held at once
WARM_CONCURRENCY = 16  # reads at once: each a few round trips, to Redis and the database
INVALIDATE_BATCH = 1000  # keys per script call: 3.5 us a key on loopback (see cache.guard)
FILL_WAIT = 10.0  # seconds a batch's fills may take before the rest is given up
PENDING_POLL = 0.1  # seconds between looks at a batch the invalidator is retrying
# A batch's deadline: the SET deadline, sized for one key, plus this per key (as the import's).
BATCH_DEADLINE_PER_KEY = 0.001  # seconds

Progress = Callable[[int], None]  # called with how many ids are done so far


def _no_progress(done: int) -> None:
    return None


@dataclass(slots=True)
class WarmReport:
    """What a warming did; `requested` = cached + filled + stale + not_filled."""

    requested: int = 0  # ids read (duplicates within a batch once)
    cached: int = 0  # already in the cache: left as they were
    filled: int = 0  # loaded from the database and written to the cache (404s included)
    stale: int = 0  # loaded, but a write came in meanwhile: correctly not written
    not_filled: int = 0  # loaded, not written: Redis failed, refused or was too slow
    not_found: int = 0  # of the ids read, those with no post (cached as such briefly)
    database_error: str | None = None  # the warming stopped here: the database failed

    def to_json(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "cached": self.cached,
            "filled": self.filled,
            "stale": self.stale,
            "not_filled": self.not_filled,
            "not_found": self.not_found,
            "database_error": self.database_error,
        }


@dataclass(slots=True)
class InvalidationReport:
    invalidated: int = 0  # post keys Redis took (their generations bumped, values deleted)
    batches: int = 0  # round trips (script calls) sent
    pending: int = 0  # keys of the batch Redis did not take: left to the invalidator's retries
    list_pages: bool = False  # the list pages' generation was bumped

    def to_json(self) -> dict[str, object]:
        return {
            "invalidated": self.invalidated,
            "batches": self.batches,
            "pending": self.pending,
            "list_pages": self.list_pages,
        }


class CacheAdmin:
    """Warm and invalidate posts' cache entries the service's way; see the module."""

    def __init__(
        self,
        service: PostService,
        reads: WarmingReads,
        ids: PostIds,
        cache: CacheBatches,
        invalidator: BatchInvalidations,
        *,
        warm_batch: int = WARM_BATCH,
        concurrency: int = WARM_CONCURRENCY,
        invalidate_batch: int = INVALIDATE_BATCH,
    ) -> None:
        if min(warm_batch, concurrency, invalidate_batch) < 1:
            raise ValueError("batch sizes and concurrency must be at least 1")
        self._service = service
        self._reads = reads
        self._ids = ids
        self._cache = cache
        self._invalidator = invalidator
        self._warm_batch = warm_batch
        self._concurrency = concurrency
        self._invalidate_batch = invalidate_batch

    # -- which posts ---------------------------------------------------------------------------

    async def count(self) -> int:
        """How many posts the database has (for a progress bar's total)."""
        return await self._ids.count()

    async def newest(self, count: int, *, page: int = INVALIDATE_BATCH) -> AsyncIterator[int]:
        """The ids of the `count` newest posts (all, if there are fewer), newest first, read
        `page` at a time."""
        before: int | None = None
        left = count
        while left > 0:
            ids = await self._ids.ids_page(limit=min(page, left), before_id=before)
            for post_id in ids:
                yield post_id
            if len(ids) < min(page, left):
                return
            left -= len(ids)
            before = ids[-1]

    # -- warming -------------------------------------------------------------------------------

    async def warm(self, ids: AsyncIterable[int], progress: Progress = _no_progress) -> WarmReport:
        """Read each of `ids` through the service (see the module). A database failure stops
        the warming: the report says where (`database_error`), with what was done by then."""
        report = WarmReport()
        async for batch in _batches(ids, self._warm_batch):
            unique = list(dict.fromkeys(batch))
            before = self._reads.stats()
            await self._read_all(unique, report)
            await self._reads.drain(FILL_WAIT)  # this batch's fills: landed, or given up
            self._count(report, len(unique), before)
            progress(report.requested)
            if report.database_error is not None:
                break
        return report

    async def _read_all(self, ids: Sequence[int], report: WarmReport) -> None:
        """Read `ids`, `concurrency` at a time, counting those with no post; at the first
        database failure, every reader stops (`report.database_error`)."""
        queue = iter(ids)

        async def reader() -> None:
            for post_id in queue:  # shared: each id is taken by one reader
                if report.database_error is not None:
                    return
                try:
                    entry = await self._service.read_post(post_id)
                except DatabaseUnavailable as exc:
                    report.database_error = report.database_error or str(exc)
                    return
                report.not_found += not entry.found

        await asyncio.gather(*(reader() for _ in range(min(self._concurrency, len(ids)))))

    def _count(self, report: WarmReport, requested: int, before: ReadThroughStats) -> None:
        after = self._reads.stats()
        cached = after.hits - before.hits
        filled = after.fills_done - before.fills_done
        stale = (after.fills_stale_rejected - before.fills_stale_rejected) + (
            after.fills_bypassed - before.fills_bypassed
        )
        report.requested += requested
        report.cached += cached
        report.filled += filled
        report.stale += stale
        # The rest: reads that could not reach Redis, fills skipped, failed or given up, and
        # reads a database failure cut short.
        report.not_filled += max(requested - cached - filled - stale, 0)

    # -- invalidating --------------------------------------------------------------------------

    async def invalidate(
        self, ids: AsyncIterable[int], progress: Progress = _no_progress, *, wait: float = 10.0
    ) -> InvalidationReport:
        """Invalidate the posts `ids` and, with the first batch, every list page (see the
        module). A batch Redis does not take is waited for (its retries, up to `wait` seconds)
        before the next is sent; if it has not landed by then, the rest is not sent."""
        report = InvalidationReport()
        generations: Sequence[str] = (LIST_GENERATION,)
        async for batch in _batches(ids, self._invalidate_batch):
            if not await self._send(batch, generations, report, wait):
                return report
            generations = ()
            progress(report.invalidated)
        if generations:  # no id at all: the list pages still
            await self._send([], generations, report, wait)
        return report

    async def invalidate_all(
        self, progress: Progress = _no_progress, *, wait: float = 10.0
    ) -> InvalidationReport:
        """Every post the database has, newest first, and every list page (see the module)."""
        everything = self.newest(_EVERY_POST, page=self._invalidate_batch)
        return await self.invalidate(everything, progress, wait=wait)

    async def _send(
        self,
        post_ids: Sequence[int],
        generations: Sequence[str],
        report: InvalidationReport,
        wait: float,
    ) -> bool:
        """One batch; whether it reached Redis, at once or through the retries within `wait`."""
        keys = [post_key(post_id) for post_id in post_ids]
        deadline = self._deadline(len(keys) + len(generations))
        send = partial(self._cache.invalidate_many, keys, generations, timeout=deadline)
        report.batches += 1
        sent = await self._invalidator.invalidate_with(keys, generations, send)
        # With no key, the list pages' generation: pending if a page's key is.
        watched = keys or [page_key(1, None)]
        if sent is None and not await self._landed(watched, wait):
            report.pending = len(keys)
            return False
        report.invalidated += len(keys)
        report.list_pages = report.list_pages or bool(generations)
        return True

    async def _landed(self, keys: Sequence[GuardedKey], wait: float) -> bool:
        """Whether the invalidator's retries of `keys` land within `wait` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        # Polled: the invalidator has no event to await, and a tenth of a second is no matter.
        while any(self._invalidator.is_pending(key) for key in keys):
            if loop.time() >= give_up:
                return False
            await asyncio.sleep(PENDING_POLL)
        return True

    def _deadline(self, keys: int) -> Timeout:
        base = self._cache.profile.timeouts.set
        return None if base is None else base + keys * BATCH_DEADLINE_PER_KEY


_EVERY_POST = 2**63  # more than any table holds: `newest` then reads until the ids run out


async def _batches(ids: AsyncIterable[int], size: int) -> AsyncIterator[list[int]]:
    batch: list[int] = []
    async for post_id in ids:
        batch.append(post_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
