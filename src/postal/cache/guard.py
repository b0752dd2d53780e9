"""The stale-fill guard: the stamped format, the fill script, the invalidation commands (all pure),
and `GuardedOps`, to which `CacheClient.get_guarded`, `fill_guarded` and `invalidate` delegate;
it runs them through the client's roles (deadlines, breakers, errors, events as for any command).

The race it closes: a reader misses and loads version 1 from the database; a writer commits
version 2 and invalidates the key; the reader's late fill then stores version 1, served until its
TTL ends. The guard:

- every guarded key has a generation counter in the same hash slot (`cache.keys`); an absent
  counter is generation 0;
- a value is stored stamped with the generation it was loaded under: `b"<generation>\\n" + payload`;
- a read fetches value and counter in one MGET; a value whose stamp is not the current generation
  is a miss (it was stored before the last invalidation);
- a fill is a script that writes only if the counter still equals the generation the reader saw;
- an invalidation increments the counter, then deletes the value.

So a fill for a load that began before an invalidation finds the counter moved and writes nothing;
and a value that slipped in anyway (a fill that won its race against the DEL) carries an old stamp
and reads as a miss. Correctness comes from the stamp and the script, so the invalidation needs no
MULTI: a plain pipeline is enough, and is friendlier to a cluster.

Known limit: the guard assumes the counter survives while a load is in flight. A counter evicted
under memory pressure (an `allkeys-*` policy) or expired (see GENERATION_TTL) reads as 0 again,
and a load that saw 0 before the bump could then fill: stale data bounded by the value's TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postal.cache.errors import CacheError
from postal.cache.keys import GuardedKey

if TYPE_CHECKING:
    from postal.cache.client import CacheClient, Timeout

HOUR = 3600.0

# How long a generation counter lives after its last bump. It must outlive every value stamped
# against it and every load in flight: if it expired while a reader that saw generation 0 (an
# absent counter) was still loading, that reader's fill would be accepted again. Value TTLs are
# minutes and loads seconds, so a day is far beyond both; yet counters of keys nobody writes any
# more do not stay in Redis forever.
GENERATION_TTL = 24 * HOUR

STAMP_SEPARATOR = b"\n"


@dataclass(frozen=True, slots=True)
class Guarded:
    """A guarded read: the payload (None on a miss or a stale stamp) and the current generation,
    which a fill after a miss must quote."""

    payload: bytes | None
    generation: int


def stamp(generation: int, payload: bytes) -> bytes:
    """The stored form of `payload` loaded under `generation`."""
    return b"%d\n" % generation + payload


def read_guarded(value: bytes | None, generation: bytes | None) -> Guarded:
    """Interpret an MGET of (value, generation counter); cheap on a hit (one partition, no JSON).

    Raises CacheError when the counter is not an integer: a corrupted or foreign key, which no
    fill could ever match.
    """
    current = 0
    if generation is not None:
        try:
            current = int(generation)
        except ValueError:
            raise CacheError(f"generation counter is not an integer: {generation[:20]!r}") from None
    if value is None:
        return Guarded(None, current)
    stamped, separator, payload = value.partition(STAMP_SEPARATOR)
    if not separator or stamped != b"%d" % current:
        return Guarded(None, current)  # stored before the last invalidation, or not stamped
    return Guarded(payload, current)


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str  # what EVALSHA quotes; computed here once, so the script is never loaded up front

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


# KEYS[1] value, KEYS[2] its generation counter; ARGV[1] the generation the reader saw,
# ARGV[2] the stamped value, ARGV[3] the TTL in milliseconds. 1: written, 0: stale, not written.
FILL_SCRIPT = Script.of(
    """\
local current = redis.call('GET', KEYS[2])
if current == false then current = '0' end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)

Command = tuple[str | int, ...]


def invalidation_commands(
    keys: Sequence[GuardedKey], generations: Sequence[str], name: Callable[[str], str]
) -> list[Command]:
    """The pipeline that invalidates `keys` (bump, keep the counter alive, delete the value) and
    bumps the bare generation counters `generations`; `name` adds the client's key prefix."""
    ttl_ms = round(GENERATION_TTL * 1000)
    commands: list[Command] = []
    for key in keys:
        counter = name(key.generation_key)
        # The bump first: from the INCR on, no fill for an older generation can write.
        commands += [("INCR", counter), ("PEXPIRE", counter, ttl_ms), ("DEL", name(key.key))]
    for generation_key in generations:
        counter = name(generation_key)
        commands += [("INCR", counter), ("PEXPIRE", counter, ttl_ms)]
    return commands


def has_payload(found: Guarded) -> bool:
    return found.payload is not None


class GuardedOps:
    """The guarded operations of one `CacheClient`, which delegates to them.

    They use the client's package-private runners: `_read_op`/`_write_op` (deadline, breaker,
    error mapping, event) around `_read_command`/`_write_script`/`_write_pipeline` (the wire).
    """

    def __init__(self, client: CacheClient) -> None:
        self._client = client

    async def get(self, key: GuardedKey, timeout: Timeout) -> Guarded:
        """One MGET of value and counter on the read role, under the GET deadline.

        The event says "GET" (hit or miss, a stale stamp being a miss), like a plain GET's, so
        hit-rate metrics count guarded and plain reads alike.
        """
        client = self._client
        names = (client.key(key.key), client.key(key.generation_key))

        async def call() -> Guarded:
            value, generation = await client._read_command("MGET", *names)
            return read_guarded(value, generation)

        found: Guarded = await client._read_op("GET", key.key, timeout, call, is_hit=has_payload)
        return found

    async def fill(
        self, key: GuardedKey, generation: int, payload: bytes, ttl: float, timeout: Timeout
    ) -> bool:
        """FILL_SCRIPT on the write role, under the SET deadline; False: stale, not written.

        Sent as EVALSHA, and as EVAL after a NOSCRIPT (a new, restarted or failed-over Redis),
        which caches it there again. The event says "EVALSHA".
        """
        if ttl <= 0:
            raise ValueError(f"a fill needs a positive TTL, got {ttl}")
        client = self._client
        names = (client.key(key.key), client.key(key.generation_key))
        arguments = (generation, stamp(generation, payload), max(1, round(ttl * 1000)))

        def call() -> Awaitable[int]:
            return client._write_script(FILL_SCRIPT, names, arguments)

        written: int = await client._write_op("EVALSHA", key.key, timeout, call)
        return written == 1

    async def invalidate(
        self, keys: Sequence[GuardedKey], generations: Sequence[str], timeout: Timeout
    ) -> None:
        """`invalidation_commands` in one non-transactional pipeline, write role, SET deadline.

        When it raises, some, all or none of it may have reached Redis; repeating it is always
        safe (one more bump, one more DEL). The event says "PIPELINE", with the first key.
        """
        client = self._client
        commands = invalidation_commands(keys, generations, client.key)
        if not commands:
            return
        pipeline = client._write_pipeline()
        for command in commands:
            pipeline.execute_command(*command)
        first = keys[0].key if keys else generations[0]
        await client._write_op("PIPELINE", first, timeout, pipeline.execute)
