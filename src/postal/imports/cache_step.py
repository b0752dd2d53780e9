"""The cache after a bulk import has committed: invalidate the touched posts, or warm them.

While rows are written nothing touches the cache (a per-row invalidation would cost a round trip
per row, and could not be undone if the import then rolled back). After the commit:

- every touched post's key (`post:{id}`: updated posts, and created ones too, whose id may have a
  negative entry cached) is invalidated: its generation bumped and its value deleted, in batches
  of `batch_size` keys on the write client, one round trip a batch (`CacheClient.invalidate_many`,
  a script call: see `cache.guard` for why not a pipeline of per-key commands); the list pages'
  generation is bumped once, with the first batch. Each batch goes through the `Invalidator`, so
  one Redis does not take is remembered, bypassed by this process's reads and retried in the
  background: the report then says `pending`.
- with `warm`, each batch is then filled with the posts' current entries (the bytes
  `PostService.read_post` would cache), read from the database *after* the batch's invalidation,
  each fill quoting the generation that invalidation returned (the stale-fill guard): a writer
  that commits after the read bumps the generation after its commit, so the fill of what the
  import read is refused (or deleted) rather than left stale. One more round trip a batch.

All of it happens before `PostImporter.run` returns, so once it has, no reader is served a post
older than what the import committed (the guard refuses the late fills of reads that began
before).

`time_invalidation` is the benchmark's comparison: the same invalidation one key per round trip,
or a batch of many keys per round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from postal.cache import CacheError, GuardedFill, GuardedKey, Timeout, jittered
from postal.imports.ports import ImportCache, ImportInvalidations, ImportStore
from postal.posts.cache_keys import LIST_GENERATION, post_key
from postal.posts.entries import Entry, encode_entry
from postal.posts.errors import DatabaseUnavailable
from postal.posts.representation import etag, post_json

# The name it had under posts/: log filters and alerts keyed on it keep working.
logger = logging.getLogger("postal.posts.imports")

# A batch's deadline: the SET deadline (200 ms by default) is sized for one key, and a batch of
# 1,000 warm fills carries about 1 MB (each entry a ~0.5-1 kB post) and makes Redis run 2,000
# commands: a few milliseconds on loopback, but tens on a busy host or a remote Redis. So each
# batch gets the SET deadline plus 1 ms per key: 1.2 s for 1,000 keys, room for a link of ~1 MB/s,
# while a Redis that does not answer still fails a batch within about a second.
BATCH_DEADLINE_PER_KEY = 0.001  # seconds


@dataclass(frozen=True, slots=True)
class CacheStepReport:
    keys: int  # post keys invalidated (and, with warm, offered a fill)
    pipelines: int  # round trips to Redis: one per batch of keys, one more per batch with warm
    seconds: float
    warmed: int  # keys filled with their new entry
    pending: bool  # Redis did not take all of it: the invalidator retries it

    def to_json(self) -> dict[str, object]:
        return {
            "keys": self.keys,
            "pipelines": self.pipelines,
            "seconds": round(self.seconds, 6),
            "warmed": self.warmed,
            "pending": self.pending,
        }


class ImportCacheStep:
    """Invalidates (and with `warm`, fills) the keys of the posts an import touched."""

    def __init__(
        self,
        store: ImportStore,
        cache: ImportCache,
        invalidator: ImportInvalidations,
        *,
        post_ttl: float,
        ttl_jitter: float,
    ) -> None:
        self._store = store
        self._cache = cache
        self._invalidator = invalidator
        self._post_ttl = post_ttl
        self._ttl_jitter = ttl_jitter

    async def run(self, post_ids: Sequence[int], *, warm: bool, batch_size: int) -> CacheStepReport:
        """Never raises a cache error; a database error while warming stops the warming (the
        invalidations still all happen) and is logged."""
        started = time.perf_counter()
        round_trips = warmed = 0
        pending = False
        bump: Sequence[str] = (LIST_GENERATION,)  # once, with the first batch
        for first in range(0, len(post_ids), batch_size):
            batch = post_ids[first : first + batch_size]
            keys = [post_key(post_id) for post_id in batch]
            deadline = self._deadline(len(keys) + len(bump))
            send = partial(self._cache.invalidate_many, keys, bump, timeout=deadline)
            generations = await self._invalidator.invalidate_with(keys, bump, send)
            round_trips += 1
            bump = ()
            if generations is None:
                pending = True
                continue
            if warm:
                try:
                    filled, sent = await self._warm(batch, keys, generations)
                except DatabaseUnavailable as exc:  # stops the warming, not the invalidations
                    logger.warning(
                        "import: warming the cache stopped, the database failed: %s", exc
                    )
                    warm = False
                    continue
                warmed += filled
                round_trips += sent
        return CacheStepReport(
            keys=len(post_ids),
            pipelines=round_trips,
            seconds=time.perf_counter() - started,
            warmed=warmed,
            pending=pending,
        )

    async def _warm(
        self, batch: Sequence[int], keys: Sequence[GuardedKey], generations: Sequence[int]
    ) -> tuple[int, int]:
        """Fill one invalidated batch with the posts as the database has them now: (keys
        written, round trips made). A fill Redis refuses is logged: the keys stay invalidated."""
        posts = await self._store.read_posts(batch)
        quoted = dict(zip(batch, zip(keys, generations, strict=True), strict=True))
        fills: list[GuardedFill] = []
        for post in posts:
            key, generation = quoted[post.id]
            if self._invalidator.is_pending(key):  # a later write's bump has not reached Redis
                continue
            entry = encode_entry(Entry(200, etag(post.version), post_json(post)))
            ttl = jittered(self._post_ttl, self._ttl_jitter)
            fills.append(GuardedFill(key, generation, entry, ttl))
        if not fills:
            return 0, 0
        try:
            written = await self._cache.fill_guarded_many(fills, timeout=self._deadline(len(fills)))
        except CacheError as exc:  # the keys are invalidated: reads miss and load, that is all
            logger.warning("import: warming %d keys failed: %s", len(fills), exc)
            return 0, 1
        return written, 1

    def _deadline(self, keys: int) -> Timeout:
        return batch_deadline(self._cache, keys)


def batch_deadline(cache: ImportCache, keys: int) -> Timeout:
    """The SET deadline plus BATCH_DEADLINE_PER_KEY per key; none if SET has none."""
    base = cache.profile.timeouts.set
    return None if base is None else base + keys * BATCH_DEADLINE_PER_KEY


async def time_invalidation(
    cache: ImportCache, post_ids: Sequence[int], *, keys_per_call: int
) -> float:
    """Seconds to invalidate the keys of `post_ids`, `keys_per_call` keys per round trip, one
    call after the other: 1 is one round trip per key, 1000 one per thousand keys (the import's
    default batch). The same work either way (`CacheClient.invalidate_many`: each key's INCR,
    PEXPIRE and DEL), straight on the cache client, without the invalidator: a CacheError
    propagates (a benchmark wants to know)."""
    if keys_per_call < 1:
        raise ValueError(f"keys_per_call must be >= 1, got {keys_per_call}")
    started = time.perf_counter()
    for first in range(0, len(post_ids), keys_per_call):
        keys = [post_key(post_id) for post_id in post_ids[first : first + keys_per_call]]
        await cache.invalidate_many(keys, timeout=batch_deadline(cache, len(keys)))
    return time.perf_counter() - started
