"""The stale-fill guard: the stamped format, the fill script, the invalidation commands (all pure),
and `GuardedOps`, to which `CacheClient.get_guarded`, `fill_guarded` and `invalidate` (and their
batch forms `fill_guarded_many` and `invalidate_many`) delegate. It runs them through the
transport's executor (`RedisClient.run_read` and `run_write`: deadlines, breakers, errors, events
as for any command), and uses nothing of the transport but its public names.

The race it closes: a reader misses and loads version 1 from the database; a writer commits
version 2 and invalidates the key; the reader's late fill then stores version 1, served until its
TTL ends. The guard:

- every guarded key has a generation counter in the same hash slot (`keys`); an absent
  counter is generation 0;
- a value is stored stamped with the generation it was loaded under, and when it expires:
  `b"<generation> <expires-at, Unix ms>\\n" + payload` (see "The stamp's expiry" below);
- a read fetches value and counter in one MGET; a value whose stamp is not the current generation
  is a miss (it was stored before the last invalidation);
- a fill is a script that writes only if the counter still equals the generation the reader saw;
- an invalidation increments the counter, then deletes the value.

- every value is guarded by its hash slot's epoch too (`keys`): the generation a reader sees,
  stamps and quotes is `epoch << 64 | counter` (`generation_of`), which is the counter alone while
  the epoch is 0 (absent): bumping every slot's epoch turns every stored value into a miss and
  every fill in flight into a refusal, without knowing their keys (the coarse invalidation).

So a fill for a load that began before an invalidation finds the counter moved and writes nothing;
and a value that slipped in anyway (a fill that won its race against the DEL) carries an old stamp
and reads as a miss. Correctness comes from the stamp and the script, so the invalidation needs no
MULTI: a plain pipeline is enough, and is friendlier to a cluster.

Batches (a bulk import's thousands of keys): `invalidate_many` and `fill_many` do the same for
many keys in one script call each, one command and one reply per batch. Measured on loopback
(1,000 keys a batch): 3.5 us a key, where a pipeline of the per-key commands took 23 us a key
(redis-py parses three replies a key) and a pipeline of one script call a key 9 us. The new
generations come back from the invalidation, so a writer can then fill the keys with what it
committed, quoting them: a later writer's bump makes that fill stale in turn. A batch's keys lie
in many hash slots (see below for a cluster). Redis runs a script without interleaving: 1,000
keys hold it a millisecond or two, about what an MGET of 1,000 values does.

In a Redis Cluster a script's keys must share a hash slot, so a batch is split by slot: one
script call per slot, pipelined to the node that owns it, all nodes concurrently. Measured here
(1,000 keys, invalidate then fill, 3 masters on loopback): 84 ms against 20 ms on one Redis;
353 ms when each slot's call was its own round trip.

The stamp's expiry: the early refresh (`refresh`) needs to know when a value it read will
expire, and a GET does not say. The fill writes it into the stamp (this process's wall clock
plus the TTL, taken just before the script is sent, so it is a little before Redis's own
expiry), where the read finds it at the cost of one more partition and an int(): measured with
`python -m postal_bench.guarded_read`, see docs/benchmarks.md. A PTTL beside the MGET would be
exact, but it is a second command on every read, and in the near cache the expiry must travel
with the value anyway. Values stamped without it (`b"<generation>\\n"`, written before this
format, during a rolling upgrade) read as hits with no expiry: never refreshed early, they
expire as before. The older code reads the new stamp as a miss (its stamp is not just the
generation): during an upgrade, an old worker loads such a key once and fills it in the old
format, which then serves both.

Counters that start again: a restarted Redis (no persistence), a failover to a replica that had
not yet received the last bumps, a counter evicted under memory pressure (an `allkeys-*` policy)
or expired (GENERATION_TTL): each loses counters, and a counter that starts again from 0 and is
bumped again could come back to the very generation a load in flight quoted, which would then
fill what the last write replaced. Two rules close that, with no per-server epoch to fetch:

- a counter is never created at a small number: whoever creates it (an invalidation's bump, or a
  reader that found it absent) sets it to a random 47-bit start first (`SET ... NX`), so a
  counter that started again matches a generation quoted before with odds of about 2^-47 a bump;
- a reader never quotes an absent counter ("0": "never written", and equally "lost a moment
  ago"). On a miss with no counter, `GuardedOps.get` creates it (`OPEN_SCRIPT`, on the write
  role: one more round trip, on a miss that goes to the database anyway, once per key per
  GENERATION_TTL) and quotes what it created. A load that began before the loss then finds the
  counter absent, or at another random start, and its fill is refused. When the counter cannot
  be created, the reader quotes UNFILLABLE, which no counter equals.

What remains: a Redis restarted *with* persistence loads counters and values as they were at its
last snapshot, so a value invalidated after that snapshot comes back, stamped with its
generation, until its TTL. Run the cache's Redis without persistence (the shipped manifests do).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from postal.cache.policy.keys import GuardedKey
from postal.cache.transport import (
    USE_DEFAULT,
    CacheError,
    Node,
    RedisClient,
    ReplicaWait,
    Script,
    Timeout,
    Value,
    all_of,
    pipeline_call,
    read_call,
    script_call,
    scripts_call,
    wait_commands,
    wait_milliseconds,
)

HOUR = 3600.0
# A batch part retried alone gets what is left of the batch's deadline, and at least this (a
# deadline already spent fails the retry at once, as a timeout).
MIN_RETRY_BUDGET = 0.001  # seconds

# One script call of a batch split by slot: (its first key, for routing and the event; the
# script's KEYS; its ARGV).
ScriptPart = tuple[str, Sequence[str], "Sequence[Value]"]

# How long a generation counter lives after its last bump. It must outlive every value stamped
# against it and every load in flight: if it expired while a reader that saw generation 0 (an
# absent counter) was still loading, that reader's fill would be accepted again. Value TTLs are
# minutes and loads seconds, so a day is far beyond both; yet counters of keys nobody writes any
# more do not stay in Redis forever.
GENERATION_TTL = 24 * HOUR

STAMP_SEPARATOR = b"\n"
EXPIRY_SEPARATOR = b" "  # between the generation and the expiry, inside the stamp
# A generation is `epoch << EPOCH_SHIFT | counter`: Redis counters (INCR) stay below 2**63, so
# the two never overlap, and with the epoch at 0 the generation is the counter, stamped as before.
EPOCH_SHIFT = 64
COUNTER_MASK = (1 << EPOCH_SHIFT) - 1


def generation_of(counter: int, epoch: int) -> int:
    """The generation a value must be stamped with while its key's counter and its slot's epoch
    are these."""
    return epoch << EPOCH_SHIFT | counter


def counter_and_epoch(generation: int) -> tuple[int, int]:
    """`generation_of`'s arguments back, for the scripts, which compare each with its key."""
    return generation & COUNTER_MASK, generation >> EPOCH_SHIFT


# A new counter starts at a random number below 2^47: far from any generation a load in flight
# could quote from the counter's previous life, and small enough for a bump to stay exact in a
# script's Lua numbers (doubles: integers are exact below 2^53).
START_BITS = 47
UNFILLABLE = -1  # quoted when no generation could be established: no counter equals it


def generation_start() -> int:
    """Where a counter created now starts (see the module docstring): random, never 0."""
    return random.getrandbits(START_BITS) | 1


@dataclass(frozen=True, slots=True)
class Guarded:
    """A guarded read: the payload (None on a miss or a stale stamp) and the current generation,
    which a fill after a miss must quote; on a hit, when the value expires (Unix time, seconds,
    from the fill's clock), or None for a value stamped without it."""

    payload: bytes | None
    generation: int
    expires_at: float | None = None


def stamp(generation: int, payload: bytes, expires_at_ms: int | None = None) -> bytes:
    """The stored form of `payload` loaded under `generation`, to expire at `expires_at_ms`
    (Unix time, milliseconds); without it, the format written before the expiry was stamped."""
    if expires_at_ms is None:
        return b"%d\n" % generation + payload
    return b"%d %d\n" % (generation, expires_at_ms) + payload


def now_ms() -> int:
    """This process's wall clock in Unix milliseconds: what a fill's expiry is counted from."""
    return time.time_ns() // 1_000_000


def read_guarded(
    value: bytes | None, generation: bytes | None, epoch: bytes | None = None
) -> Guarded:
    """Interpret an MGET of (value, generation counter, slot epoch); cheap on a hit (two
    partitions and an int(), no JSON).

    Raises CacheError when a counter is not an integer: a corrupted or foreign key, which no
    fill could ever match.
    """
    current = generation_of(_counter(generation), _counter(epoch))
    if value is None:
        return Guarded(None, current)
    stamped, separator, payload = value.partition(STAMP_SEPARATOR)
    if not separator:
        return Guarded(None, current)  # not stamped
    stamped_generation, has_expiry, expiry = stamped.partition(EXPIRY_SEPARATOR)
    if stamped_generation != b"%d" % current:
        return Guarded(None, current)  # stored before the last invalidation
    if not has_expiry:
        return Guarded(payload, current)  # the format without the expiry: see the module
    try:
        return Guarded(payload, current, int(expiry) / 1000)
    except ValueError:
        return Guarded(None, current)  # not a stamp of ours


def _counter(value: bytes | None) -> int:
    """A counter as MGET returns it: absent is 0."""
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise CacheError(f"generation counter is not an integer: {value[:20]!r}") from None


# KEYS[1] value, KEYS[2] its generation counter, KEYS[3] its slot's epoch; ARGV[1] and ARGV[4]
# the counter and the epoch the reader saw (`counter_and_epoch`), ARGV[2] the stamped value,
# ARGV[3] the TTL in milliseconds. 1: written, 0: stale, not written.
FILL_SCRIPT = Script.of(
    """\
local current = redis.call('GET', KEYS[2])
if current == false then current = '0' end
local epoch = redis.call('GET', KEYS[3])
if epoch == false then epoch = '0' end
if current ~= ARGV[1] or epoch ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)

# KEYS[1] a generation counter; ARGV[1] the start for a new counter, ARGV[2] its TTL in
# milliseconds. Returns the counter, created at ARGV[1] if it was absent.
OPEN_SCRIPT = Script.of(
    """\
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
)

# The batch forms. KEYS: each key's value, its counter and its slot's epoch, triples after
# triples, then (invalidation only) bare counters; ARGV[1] the number of triples, ARGV[2] the
# counters' TTL in milliseconds, ARGV[3] where a counter created by the bump starts. Returns each
# triple's new counter and its epoch, flat. The epoch is made to exist (at 0, which an absent
# epoch reads as, so no value is invalidated by it; never touched if present, which would make
# CLIENT TRACKING drop the slot's entries from every near cache): during a slot's migration Redis
# refuses a multi-key command some of whose keys are missing (TRYAGAIN), so a slot's keys had
# better be all there.
INVALIDATE_MANY_SCRIPT = Script.of(
    """\
local keys, ttl, start = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local generations = {}
for i = 1, keys do
  redis.call('SET', KEYS[3 * i - 1], start, 'NX')
  generations[2 * i - 1] = redis.call('INCR', KEYS[3 * i - 1])
  redis.call('PEXPIRE', KEYS[3 * i - 1], ttl)
  redis.call('DEL', KEYS[3 * i - 2])
  redis.call('SET', KEYS[3 * i], '0', 'NX', 'PX', ttl)
  generations[2 * i] = redis.call('GET', KEYS[3 * i])
end
for i = 3 * keys + 1, #KEYS do
  redis.call('SET', KEYS[i], start, 'NX')
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return generations
"""
)

# KEYS as above (triples only); ARGV: for each triple the counter and epoch its fill quotes, the
# stamped value and the TTL in milliseconds. Returns how many were written (the others' counter
# or epoch had moved: stale).
FILL_MANY_SCRIPT = Script.of(
    """\
local written = 0
for i = 1, #KEYS / 3 do
  local current = redis.call('GET', KEYS[3 * i - 1])
  if current == false then current = '0' end
  local epoch = redis.call('GET', KEYS[3 * i])
  if epoch == false then epoch = '0' end
  if current == ARGV[4 * i - 3] and epoch == ARGV[4 * i - 2] then
    redis.call('SET', KEYS[3 * i - 2], ARGV[4 * i - 1], 'PX', ARGV[4 * i])
    written = written + 1
  end
end
return written
"""
)

Command = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class GuardedFill:
    """One fill of a batch (`CacheClient.fill_guarded_many`): `fill_guarded`'s arguments."""

    key: GuardedKey
    generation: int  # the generation the payload was loaded under, or an invalidation returned
    payload: bytes
    ttl: float  # seconds, > 0


def invalidation_commands(
    keys: Sequence[GuardedKey], generations: Sequence[str], name: Callable[[str], str]
) -> list[Command]:
    """The pipeline that invalidates `keys` (bump, keep the counter alive, delete the value) and
    bumps the bare generation counters `generations`; `name` adds the client's key prefix. A
    counter that does not exist is created at a random start before its bump."""
    ttl_ms = round(GENERATION_TTL * 1000)
    start = generation_start()
    commands: list[Command] = []
    for key in keys:
        counter = name(key.generation_key)
        # The bump first: from the INCR on, no fill for an older generation can write.
        commands += [
            ("SET", counter, start, "NX"),
            ("INCR", counter),
            ("PEXPIRE", counter, ttl_ms),
            ("DEL", name(key.key)),
            # The slot's epoch made to exist, as INVALIDATE_MANY_SCRIPT does (see there).
            ("SET", name(key.epoch_key), 0, "NX", "PX", ttl_ms),
        ]
    for generation_key in generations:
        counter = name(generation_key)
        commands += [("SET", counter, start, "NX"), ("INCR", counter), ("PEXPIRE", counter, ttl_ms)]
    return commands


def invalidate_many_arguments(
    keys: Sequence[GuardedKey], generations: Sequence[str], name: Callable[[str], str]
) -> tuple[list[str], list[int]]:
    """INVALIDATE_MANY_SCRIPT's KEYS and ARGV; `name` adds the client's key prefix."""
    names: list[str] = []
    for key in keys:
        names += (name(key.key), name(key.generation_key), name(key.epoch_key))
    names += (name(generation_key) for generation_key in generations)
    return names, [len(keys), round(GENERATION_TTL * 1000), generation_start()]


def fill_many_arguments(
    fills: Sequence[GuardedFill], name: Callable[[str], str], now: int
) -> tuple[list[str], list[int | bytes]]:
    """FILL_MANY_SCRIPT's KEYS and ARGV; `name` adds the client's key prefix, `now` is the
    wall clock in Unix milliseconds (`now_ms`), which each value's stamped expiry counts from."""
    names: list[str] = []
    arguments: list[int | bytes] = []
    for fill in fills:
        if fill.ttl <= 0:
            raise ValueError(f"a fill needs a positive TTL, got {fill.ttl}")
        key = fill.key
        names += (name(key.key), name(key.generation_key), name(key.epoch_key))
        counter, epoch = counter_and_epoch(fill.generation)
        ttl_ms = max(1, round(fill.ttl * 1000))
        arguments += (counter, epoch, stamp(fill.generation, fill.payload, now + ttl_ms), ttl_ms)
    return names, arguments


def generations_of(replies: Sequence[Any]) -> list[int]:
    """INVALIDATE_MANY_SCRIPT's reply (each key's new counter, then its epoch) as generations."""
    counters, epochs = replies[0::2], replies[1::2]
    return [generation_of(int(c), _counter(e)) for c, e in zip(counters, epochs, strict=True)]


def has_payload(found: Guarded) -> bool:
    return found.payload is not None


class GuardedOps:
    """The guarded operations on one `RedisClient`; `CacheClient` delegates to them.

    They use the transport's executor: `run_read`/`run_write` (routing, deadline, breaker, error
    mapping, event) around a `call` from `transport.wire` (the I/O on the node the
    operation was routed to). Batches are split by hash slot in a cluster (`write_groups`):
    each slot's part is one script call, routed to that slot's node, all parts concurrently.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    async def get(self, key: GuardedKey, timeout: Timeout) -> Guarded:
        """One MGET of value, counter and slot epoch on the read role, under the GET deadline.

        The event says "GET" (hit or miss, a stale stamp being a miss), like a plain GET's, so
        hit-rate metrics count guarded and plain reads alike.

        A miss with no counter at all creates it (`open_generation`), so that the generation a
        fill quotes is never the absent counter's 0 (see the module docstring).
        """
        client = self._client
        names = (client.key(key.key), client.key(key.generation_key), client.key(key.epoch_key))
        mget = read_call("MGET", *names)
        counter_absent = False
        epoch_seen = 0

        async def call(node: Node) -> Guarded:
            nonlocal counter_absent, epoch_seen
            value, generation, epoch = await mget(node)
            counter_absent = generation is None
            found = read_guarded(value, generation, epoch)
            epoch_seen = counter_and_epoch(found.generation)[1]
            return found

        found: Guarded = await client.run_read("GET", key.key, timeout, call, is_hit=has_payload)
        if found.payload is None and counter_absent:
            opened = await self.open_generation(key)
            if opened == UNFILLABLE:
                return Guarded(None, UNFILLABLE)
            return Guarded(None, generation_of(opened, epoch_seen))
        return found

    async def open_generation(self, key: GuardedKey) -> int:
        """The key's counter, created at a random start if absent (OPEN_SCRIPT, write role, SET
        deadline); UNFILLABLE when the write role cannot answer. The event says "EVALSHA"."""
        client = self._client
        counter = client.key(key.generation_key)
        arguments = (generation_start(), round(GENERATION_TTL * 1000))
        call = script_call(OPEN_SCRIPT, (counter,), arguments)
        try:
            opened: bytes = await client.run_write("EVALSHA", key.key, USE_DEFAULT, call)
            return int(opened)
        except (CacheError, ValueError):
            return UNFILLABLE

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
        names = (client.key(key.key), client.key(key.generation_key), client.key(key.epoch_key))
        counter, epoch = counter_and_epoch(generation)
        ttl_ms = max(1, round(ttl * 1000))
        stamped = stamp(generation, payload, now_ms() + ttl_ms)
        arguments = (counter, stamped, ttl_ms, epoch)
        call = script_call(FILL_SCRIPT, names, arguments)
        written: int = await client.run_write("EVALSHA", key.key, timeout, call)
        return written == 1

    async def invalidate(
        self, keys: Sequence[GuardedKey], generations: Sequence[str], timeout: Timeout
    ) -> None:
        """`invalidation_commands` in one non-transactional pipeline, write role, SET deadline;
        then, when reads go to replicas, `WAIT` in the same pipeline (`transport.replicas`). In a
        cluster, whose keys lie in several slots, `invalidate_many` instead (by slot).

        When it raises, some, all or none of it may have reached Redis; repeating it is always
        safe (one more bump, one more DEL). The event says "PIPELINE", with the first key.
        `ReplicasBehind`: the primary has it all, a replica has not confirmed it yet.
        """
        client = self._client
        groups = _by_slot(client, keys, generations)
        if len(groups) > 1:
            await self._invalidate_by_slot(keys, groups, timeout)
            return
        commands = invalidation_commands(keys, generations, client.key)
        if not commands:
            return
        wait_ms = wait_milliseconds(client.write_deadline(timeout))

        async def call(node: Node) -> tuple[list[Any], int, ReplicaWait | None]:
            # Waited for under the deadline: it may ask INFO.
            wanted = await _replicas(node)
            wait = wait_commands(wanted, wait_ms) if wanted else []
            return await pipeline_call([*commands, *wait])(node), wanted, node.replica_wait

        first = keys[0].key if keys else generations[0]
        replies, wanted, replicas = await client.run_write("PIPELINE", first, timeout, call)
        _check_replicas(replicas, replies[-2:] if wanted else None, wanted, first, wait_ms)

    async def invalidate_many(
        self, keys: Sequence[GuardedKey], generations: Sequence[str], timeout: Timeout
    ) -> list[int]:
        """As `invalidate`, in one INVALIDATE_MANY_SCRIPT call (then a WAIT on the same
        connection when reads go to replicas); the new generation of each of `keys`. In a
        cluster, one call per hash slot, pipelined per node (`_per_slot`). When it raises, all,
        some or none of it may have run: repeating it is safe. The event says "EVALSHA", with
        the first key."""
        groups = _by_slot(self._client, keys, generations)
        if len(groups) <= 1:
            return generations_of(await self._invalidate_one_slot(keys, generations, timeout))
        return await self._invalidate_by_slot(keys, groups, timeout)

    async def _invalidate_by_slot(
        self,
        keys: Sequence[GuardedKey],
        groups: Sequence[tuple[list[int], list[str]]],
        timeout: Timeout,
    ) -> list[int]:
        """A cluster's invalidation, `groups` from `_by_slot`: one script call per slot,
        pipelined per node, each node's WAIT after them; the new generation of each key."""
        client = self._client
        parts: list[ScriptPart] = []
        for key_indices, counters in groups:
            slot_keys = [keys[i] for i in key_indices]
            names, arguments = invalidate_many_arguments(slot_keys, counters, client.key)
            parts.append((slot_keys[0].key if slot_keys else counters[0], names, arguments))

        def alone(index: int, left: Timeout) -> Awaitable[list[Any]]:
            key_indices, counters = groups[index]
            return self._invalidate_one_slot([keys[i] for i in key_indices], counters, left)

        replies = await self._per_slot(INVALIDATE_MANY_SCRIPT, parts, timeout, alone, wait=True)
        new_generations = [0] * len(keys)
        for (key_indices, _), bumped in zip(groups, replies, strict=True):
            for index, generation in zip(key_indices, generations_of(bumped), strict=True):
                new_generations[index] = generation
        return new_generations

    async def _per_slot(
        self,
        script: Script,
        parts: Sequence[ScriptPart],
        timeout: Timeout,
        alone: Callable[[int, Timeout], Awaitable[Any]],
        *,
        wait: bool = False,
    ) -> list[Any]:
        """`script` once per part (each part's keys in one slot), pipelined per node on one
        connection, the nodes concurrently; with `wait`, the node's WAIT for its replicas
        follows on that connection. A part refused there (its slot moved meanwhile,
        TRYAGAIN) runs again through `alone(index, what is left of the deadline)`, routed and
        redirected as any single call: the whole batch stays within its deadline. Replies in
        the parts' order."""
        client = self._client
        replies: list[Any] = [None] * len(parts)
        limit = client.write_deadline(timeout)
        wait_ms = wait_milliseconds(limit)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def run_alone(index: int) -> None:
            left = None if limit is None else max(MIN_RETRY_BUDGET, limit - (loop.time() - started))
            replies[index] = await alone(index, left)

        async def one_node(indices: list[int]) -> None:
            calls = [(parts[i][1], parts[i][2]) for i in indices]
            first = parts[indices[0]][0]

            async def call(node: Node) -> tuple[list[Any], int, Any, ReplicaWait | None]:
                wanted = await _replicas(node) if wait else 0
                then = wait_commands(wanted, wait_ms) if wanted else ()
                got, waited = await scripts_call(script, calls, then=then)(node)
                return got, wanted, waited, node.replica_wait if wait else None

            got, wanted, waited, replicas = await client.run_write("EVALSHA", first, timeout, call)
            again = []
            for index, reply in zip(indices, got, strict=True):
                if isinstance(reply, Exception):
                    again.append(index)
                else:
                    replies[index] = reply
            await all_of(run_alone(index) for index in again)
            _check_replicas(replicas, waited, wanted, first, wait_ms)

        nodes = client.write_nodes([client.key(key) for key, _, _ in parts])
        await all_of(one_node(indices) for indices in nodes)
        return replies

    async def _invalidate_one_slot(
        self, keys: Sequence[GuardedKey], generations: Sequence[str], timeout: Timeout
    ) -> list[Any]:
        """INVALIDATE_MANY_SCRIPT on one slot's keys: its reply (`generations_of` reads it)."""
        if not keys and not generations:
            return []
        client = self._client
        names, arguments = invalidate_many_arguments(keys, generations, client.key)
        wait_ms = wait_milliseconds(client.write_deadline(timeout))

        async def call(node: Node) -> tuple[list[Any], int, list[Any] | None, ReplicaWait | None]:
            wanted = await _replicas(node)
            if not wanted:
                bumped = await script_call(INVALIDATE_MANY_SCRIPT, names, arguments)(node)
                return bumped, 0, None, node.replica_wait
            wait = wait_commands(wanted, wait_ms)
            invalidate = script_call(INVALIDATE_MANY_SCRIPT, names, arguments, then=wait)
            bumped, waited = await invalidate(node)
            return bumped, wanted, waited, node.replica_wait

        first = keys[0].key if keys else generations[0]
        new_generations, wanted, waited, replicas = await client.run_write(
            "EVALSHA", first, timeout, call
        )
        _check_replicas(replicas, waited, wanted, first, wait_ms)
        return new_generations

    async def fill_many(self, fills: Sequence[GuardedFill], timeout: Timeout) -> int:
        """Each of `fills` as `fill` would, in one FILL_MANY_SCRIPT call (in a cluster, one per
        hash slot, pipelined per node: `_per_slot`); how many were written. The event says
        "EVALSHA", with the first key."""
        client = self._client
        groups = client.write_groups([client.key(fill.key.key) for fill in fills])
        parts: list[ScriptPart] = []
        now = now_ms()
        for indices in groups:
            part = [fills[i] for i in indices]
            names, arguments = fill_many_arguments(part, client.key, now)
            parts.append((part[0].key.key, names, arguments))
        if len(parts) == 1:
            key, slot_names, slot_arguments = parts[0]
            call = script_call(FILL_MANY_SCRIPT, slot_names, slot_arguments)
            written: int = await client.run_write("EVALSHA", key, timeout, call)
            return written

        def alone(index: int, left: Timeout) -> Awaitable[int]:
            key, slot_names, slot_arguments = parts[index]
            call = script_call(FILL_MANY_SCRIPT, slot_names, slot_arguments)
            return client.run_write("EVALSHA", key, left, call)

        return sum(await self._per_slot(FILL_MANY_SCRIPT, parts, timeout, alone))


async def _replicas(node: Node) -> int:
    """How many replicas an invalidation on `node` waits for (0: none, or no waiting)."""
    return 0 if node.replica_wait is None else await node.replica_wait.replicas()


def _check_replicas(
    replicas: ReplicaWait | None,
    waited: Sequence[Any] | None,
    wanted: int,
    key: str,
    wait_ms: int,
) -> None:
    """After an invalidation: count the WAIT (or its absence); ReplicasBehind if short."""
    if replicas is None or not replicas.enabled:
        return
    if not wanted:
        replicas.skipped()
        return
    where = f"invalidation of {key} (and what came with it)"
    assert waited is not None  # replies of `wait_commands`, sent whenever `wanted`
    replicas.check(waited, wanted, where=where, waited_ms=wait_ms)


def _by_slot(
    client: RedisClient, keys: Sequence[GuardedKey], generations: Sequence[str]
) -> list[tuple[list[int], list[str]]]:
    """`keys` (as indices) and bare counters `generations`, grouped by the write role's hash
    slot: one group on a single server. Empty groups are left out."""
    names = [client.key(key.key) for key in keys] + [client.key(g) for g in generations]
    groups = []
    for indices in client.write_groups(names):
        key_indices = [i for i in indices if i < len(keys)]
        counters = [generations[i - len(keys)] for i in indices if i >= len(keys)]
        if key_indices or counters:
            groups.append((key_indices, counters))
    return groups
