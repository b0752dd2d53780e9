"""Key naming for generation-guarded values, and TTL jitter (pure: no I/O).

A guarded value lives under `namespace:{ident}` and its generation counter under
`namespace:{ident}:gen`. The `{...}` is a Redis Cluster hash tag: only the part inside the braces
picks the slot, so a value and its counter always share a slot, and the read (MGET of both) and the
fill script (which reads one and writes the other) stay single-slot operations in a cluster.

Several values may share one generation (`variant=`): `guarded("list", "all", variant="page=2")`
is `list:{all}:page=2` guarded by `list:{all}:gen`, so bumping that one counter turns every page
into a miss without having to know which pages exist.

Every value is also guarded by the epoch of its hash slot, `epoch:{<tag>}`, where `<tag>` is a
short string that hashes to the same Redis Cluster slot as the value's own tag (one tag per slot,
16,384 in all, found once). Bumping every epoch turns every value in the cache into a miss at
once, without knowing its key: the coarse invalidation `Invalidator` falls back to when too many
keys are pending (see `invalidation`). An epoch is in the value's slot, so the read's MGET and the
fill script stay single-slot operations in a cluster, as with the generation.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

GENERATION_SUFFIX = "gen"
EPOCH_NAMESPACE = "epoch"
SLOTS = 16384  # Redis Cluster's hash slots: CRC16 (XMODEM) of the hash tag, modulo this


@dataclass(frozen=True, slots=True)
class GuardedKey:
    """A value's key and the key of the generation counter that guards it (same hash slot);
    `epoch_key`, its slot's epoch, follows from the key's hash tag."""

    key: str
    generation_key: str
    epoch_key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "epoch_key", epoch_key(self.key))  # frozen: set once, here


def hash_slot(key: str) -> int:
    """The Redis Cluster slot of `key`: of its hash tag (the text inside its first `{...}`, when
    not empty), else of the whole key. Redis's CRC16 is CCITT/XMODEM: `binascii.crc_hqx`."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


def epoch_key(key: str) -> str:
    """The epoch counter of `key`'s hash slot (a key of its own, in that slot)."""
    return _epoch_keys()[hash_slot(key)]


def all_epoch_keys() -> tuple[str, ...]:
    """Every slot's epoch counter: bumping them all is the coarse invalidation."""
    return _epoch_keys()


@functools.cache
def _epoch_keys() -> tuple[str, ...]:
    """`epoch:{<tag>}` for each slot in order, `<tag>` the shortest (then first) string of
    letters and digits that hashes to it. All slots are covered by three characters: found in
    about 20 ms, once per process, on first use."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    alphabet = string.digits + string.ascii_letters
    for length in (1, 2, 3):
        for letters in itertools.product(alphabet, repeat=length):
            tag = "".join(letters)
            slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if not missing:
                    return tuple(f"{EPOCH_NAMESPACE}:{{{tag}}}" for tag in tags)
    raise AssertionError("three characters cover every slot")  # pragma: no cover


def guarded(namespace: str, ident: str, *, variant: str | None = None) -> GuardedKey:
    """`namespace:{ident}` guarded by `namespace:{ident}:gen`; see the module docstring.

    Braces are refused in `namespace` and `ident`: an extra `{` or `}` would move the hash tag,
    and an empty `ident` would make the tag empty (Redis then hashes the whole key), either of
    which could put a value and its counter in different cluster slots.
    """
    if not ident:
        raise ValueError("a guarded key needs a non-empty ident")
    if namespace == EPOCH_NAMESPACE:
        raise ValueError(f"namespace {EPOCH_NAMESPACE!r} is the slots' epochs'")
    for part in (namespace, ident, variant or ""):
        if "{" in part or "}" in part:  # plain `in`: this runs on every read
            raise ValueError(f"{part!r}: braces are reserved for the hash tag")
    if variant == GENERATION_SUFFIX:
        raise ValueError(f"variant {GENERATION_SUFFIX!r} would be the generation key itself")
    tagged = f"{namespace}:{{{ident}}}"
    key = tagged if variant is None else f"{tagged}:{variant}"
    return GuardedKey(key=key, generation_key=f"{tagged}:{GENERATION_SUFFIX}")


def jittered(ttl: float, fraction: float, rng: Callable[[], float] = random.random) -> float:
    """`ttl` stretched by up to `fraction` of itself, never shortened.

    Keys filled together (after a deploy, a restart, a bulk import) would otherwise all expire
    together and miss together: a stampede on the database every TTL. `rng` returns [0, 1).
    """
    if fraction < 0:
        raise ValueError(f"jitter fraction must not be negative, got {fraction}")
    return ttl * (1.0 + fraction * rng())
