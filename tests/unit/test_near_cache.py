"""The near cache's store and its coherence bookkeeping, with tracking stood in for (pure logic):
bounded in bytes, least recently used out first, a TTL of its own, entries dropped by value key
or by the generation that guards them, everything dropped on a flush or a tracking change, and
a reply never stored when anything was invalidated while it was being read."""

from __future__ import annotations

import pytest

from postal.cache import Guarded, NearCache, guarded
from postal.cache.policy.near import ENTRY_OVERHEAD, RECENT_INVALIDATIONS
from tests.support.clock import SetClock

PREFIX = "p:"


class LiveTracking:
    live = True
    unread = False

    def catch_up(self) -> bool:  # what waited unread was applied, unless it could not be
        return not self.unread


def near(
    max_bytes: int = 10_000_000, ttl: float = 10.0, clock: SetClock | None = None
) -> NearCache:
    cache = NearCache(
        key_prefix=PREFIX, max_bytes=max_bytes, ttl=ttl, clock=clock or SetClock(100.0)
    )
    cache.tracking = LiveTracking()  # type: ignore[assignment]
    return cache


def store(cache: NearCache, ident: str, payload: bytes = b"x") -> bool:
    key = guarded("post", ident)
    return cache.put(key.key, key.generation_key, Guarded(payload, 0), cache.sequence)


def served(cache: NearCache, key: str) -> bytes | None:
    """The payload a read of `key` is served from memory, if any."""
    held = cache.get(key)
    return None if held is None else held.payload


def test_a_stored_entry_is_served_until_its_key_or_generation_changes_in_redis() -> None:
    cache = near()
    assert store(cache, "1", b"v1")
    assert served(cache, "post:{1}") == b"v1"
    cache.invalidated([b"p:post:{1}:gen"])  # the writer's INCR
    assert served(cache, "post:{1}") is None
    assert store(cache, "1", b"v2")
    cache.invalidated([b"p:post:{1}"])  # its DEL, or anyone's SET
    assert served(cache, "post:{1}") is None
    assert cache.stats().invalidated == 2


def test_a_shared_generation_drops_every_entry_it_guards() -> None:
    cache = near()
    pages = [guarded("list", "all", variant=f"page={n}") for n in range(3)]
    for page in pages:
        assert cache.put(page.key, page.generation_key, Guarded(b"page", 0), cache.sequence)
    cache.invalidated([b"p:list:{all}:gen"])
    assert [served(cache, page.key) for page in pages] == [None, None, None]
    assert cache.stats().entries == 0


@pytest.mark.parametrize(
    "changed", [b"p:post:{1}", b"p:post:{1}:gen", b"p:epoch:{1}"], ids=["value", "gen", "epoch"]
)
def test_a_reply_read_while_its_key_was_invalidated_is_not_stored(changed: bytes) -> None:
    cache = near()
    key = guarded("post", "1")
    taken = cache.sequence  # before the GET is sent
    cache.invalidated([b"p:post:{2}", changed])
    assert not cache.put(key.key, key.generation_key, Guarded(b"old", 0), taken, "epoch:{1}")
    assert served(cache, key.key) is None
    assert cache.stats().stale_rejected == 1


def test_a_reply_is_stored_when_only_other_keys_changed_meanwhile() -> None:
    # Every miss's fill is a write under the prefix: with one counter for all keys, a steady
    # share of misses left no read able to store.
    cache = near()
    key = guarded("post", "1")
    taken = cache.sequence
    for n in range(2, 50):
        cache.invalidated([f"p:post:{{{n}}}".encode(), f"p:post:{{{n}}}:gen".encode()])
    cache.evict(["post:{77}"])  # an own write of another post
    assert cache.put(key.key, key.generation_key, Guarded(b"v", 0), taken, "epoch:{1}")
    assert served(cache, key.key) == b"v"


def test_a_reply_read_before_a_flush_is_not_stored() -> None:
    cache = near()
    key = guarded("post", "1")
    taken = cache.sequence
    cache.invalidated(None)
    assert not cache.put(key.key, key.generation_key, Guarded(b"old", 0), taken)
    assert cache.put(key.key, key.generation_key, Guarded(b"new", 0), cache.sequence)


def test_a_reply_older_than_the_remembered_invalidations_is_not_stored() -> None:
    cache = near()
    key = guarded("post", "1")
    taken = cache.sequence
    cache.invalidated([b"p:post:{1}"])  # the one that matters...
    for n in range(RECENT_INVALIDATIONS):  # ...pushed out of the history by others
        cache.invalidated([f"p:other:{n}".encode()])
    assert not cache.put(key.key, key.generation_key, Guarded(b"old", 0), taken)
    later = cache.sequence
    cache.invalidated([b"p:other:x"])
    assert cache.put(key.key, key.generation_key, Guarded(b"new", 0), later)


class InvalidationWaiting(LiveTracking):
    """Tracking with an invalidation of `keys` waiting unread: `catch_up` applies it."""

    def __init__(self, cache: NearCache, keys: list[bytes]) -> None:
        self.cache = cache
        self.waiting: list[bytes] | None = keys

    def catch_up(self) -> bool:
        keys, self.waiting = self.waiting, None
        if keys is not None:
            self.cache.invalidated(keys)
        return True


def test_a_reply_is_not_stored_when_its_keys_invalidation_was_waiting_unread() -> None:
    """The write's INCR and DEL pushed while the GET's reply was on its way, and read only as
    `put` asks whether tracking is usable: the reply is older than the write, and refused."""
    cache = near()
    key = guarded("post", "1")
    taken = cache.sequence  # the GET is sent
    cache.tracking = InvalidationWaiting(cache, [b"p:post:{1}", b"p:post:{1}:gen"])  # type: ignore[assignment]
    assert not cache.put(key.key, key.generation_key, Guarded(b"v1", 0), taken)
    assert served(cache, "post:{1}") is None
    assert cache.stats().stale_rejected == 1


def test_own_writes_evict_at_once() -> None:
    cache = near()
    store(cache, "1")
    taken = cache.sequence
    cache.evict(["post:{1}", "post:{1}:gen"])
    assert served(cache, "post:{1}") is None
    key = guarded("post", "1")  # a read begun before the write cannot store what it read
    assert not cache.put(key.key, key.generation_key, Guarded(b"old", 0), taken)


@pytest.mark.parametrize("event", ["flushall", "tracking down", "tracking confirmed anew"])
def test_everything_goes_when_redis_flushes_or_tracking_changes(event: str) -> None:
    cache = near()
    for n in range(5):
        store(cache, str(n))
    if event == "flushall":
        cache.invalidated(None)
    else:
        cache.tracking_changed(event == "tracking confirmed anew")
    assert cache.stats().entries == 0
    assert cache.stats().bytes == 0
    assert served(cache, "post:{1}") is None


def test_not_usable_while_tracking_is_not_live_or_cannot_catch_up() -> None:
    cache = near()
    tracking = cache.tracking
    assert cache.usable()
    tracking.unread = True  # type: ignore[union-attr]
    assert not cache.usable()
    assert not store(cache, "1")  # nor stored: an invalidation may be waiting
    tracking.unread = False  # type: ignore[union-attr]
    tracking.live = False  # type: ignore[union-attr, misc]
    assert not cache.usable()
    cache.tracking = None
    assert not cache.usable()


def test_entries_expire_at_their_own_ttl() -> None:
    clock = SetClock(100.0)
    cache = near(ttl=10.0, clock=clock)
    store(cache, "1")
    clock.now += 9.9
    assert served(cache, "post:{1}") == b"x"
    clock.now += 0.2
    assert served(cache, "post:{1}") is None
    assert cache.stats().evicted_ttl == 1


def test_the_byte_bound_holds_and_the_least_recently_used_go_first() -> None:
    entry = len(b"x" * 100) + len("p:post:{1}") + ENTRY_OVERHEAD
    cache = near(max_bytes=entry * 3)
    for n in (1, 2, 3):
        store(cache, str(n), b"x" * 100)
    assert served(cache, "post:{1}") is not None  # 1 is now the most recently used
    store(cache, "4", b"x" * 100)
    assert served(cache, "post:{2}") is None  # the least recently used went
    assert all(served(cache, f"post:{{{n}}}") is not None for n in (1, 3, 4))
    assert cache.stats().bytes <= entry * 3
    assert cache.stats().evicted_size == 1


def test_a_million_distinct_posts_stay_within_the_byte_bound() -> None:
    limit = 4 * 1024 * 1024
    cache = near(max_bytes=limit)
    payload = b"y" * 200
    for n in range(1_000_000):
        key = f"post:{{{n}}}"
        cache.put(key, key + ":gen", Guarded(payload, 0), cache.sequence)
    stats = cache.stats()
    assert stats.bytes <= limit
    assert stats.entries == limit // (len(payload) + len("p:post:{999999}") + ENTRY_OVERHEAD)
    assert stats.entries + stats.evicted_size == 1_000_000
    assert served(cache, "post:{999999}") == payload


def test_a_hit_is_held_with_its_generation_and_expiry_and_only_a_hit() -> None:
    cache = near()
    key = guarded("post", "1")
    read = Guarded(b"v1", 7, expires_at=1_700_000_300.5)  # as Redis answered it
    assert cache.put(key.key, key.generation_key, read, cache.sequence)
    assert cache.get(key.key) == read  # what an early refresh from memory needs
    with pytest.raises(ValueError, match="only a hit"):
        cache.put(key.key, key.generation_key, Guarded(None, 7), cache.sequence)


def test_an_entry_larger_than_the_bound_is_not_stored() -> None:
    cache = near(max_bytes=100)
    assert not store(cache, "1", b"z" * 200)
    assert cache.stats().entries == 0


def test_a_slot_epoch_bump_drops_that_slot_entries_only() -> None:
    cache = near()
    keys = [guarded("post", str(number)) for number in range(200)]
    for key in keys:
        found = Guarded(b"x", 0)
        assert cache.put(key.key, key.generation_key, found, cache.sequence, key.epoch_key)
    bumped = keys[0].epoch_key
    same_slot = [key for key in keys if key.epoch_key == bumped]
    cache.invalidated([f"{PREFIX}{bumped}".encode()])  # the coarse invalidation, in one slot
    assert [served(cache, key.key) for key in same_slot] == [None] * len(same_slot)
    others = [key for key in keys if key.epoch_key != bumped]
    assert all(served(cache, key.key) == b"x" for key in others)
    cache.invalidated([f"{PREFIX}{key.epoch_key}".encode() for key in others])
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (0, 0)
