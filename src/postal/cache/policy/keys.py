"""Key naming for generation-guarded values, and TTL jitter (pure: no I/O).

A guarded value lives under `namespace:{ident}` and its generation counter under
`namespace:{ident}:gen`. The `{...}` is a Redis Cluster hash tag: only the part inside the braces
picks the slot, so a value and its counter always share a slot, and the read (MGET of both) and the
fill script (which reads one and writes the other) stay single-slot operations in a cluster.

Several values may share one generation (`variant=`): `guarded("list", "all", variant="page=2")`
is `list:{all}:page=2` guarded by `list:{all}:gen`, so bumping that one counter turns every page
into a miss without having to know which pages exist.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

GENERATION_SUFFIX = "gen"


@dataclass(frozen=True, slots=True)
class GuardedKey:
    """A value's key and the key of the generation counter that guards it (same hash slot)."""

    key: str
    generation_key: str


def guarded(namespace: str, ident: str, *, variant: str | None = None) -> GuardedKey:
    """`namespace:{ident}` guarded by `namespace:{ident}:gen`; see the module docstring.

    Braces are refused in `namespace` and `ident`: an extra `{` or `}` would move the hash tag,
    and an empty `ident` would make the tag empty (Redis then hashes the whole key), either of
    which could put a value and its counter in different cluster slots.
    """
    if not ident:
        raise ValueError("a guarded key needs a non-empty ident")
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
