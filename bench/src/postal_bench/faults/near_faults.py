"""The near cache's faults: the readers' Postal keeps hot entries in memory (`NEAR_CACHE_ENABLED`,
its default), and the writer writes through a second Postal process, so that what is tested is
how the first learns of another's writes: Redis's invalidations on its tracking connection.

- `near-tracking-killed`: Redis kills the tracking connections (`CLIENT KILL ID` of every client
  named `postal-tracking`) every `KILL_INTERVAL` while the fault is on. Each time, the readers'
  Postal must flush its near cache and bypass it until tracking is confirmed again: no stale
  read at all.
- `near-partitioned`: the readers' Postal reaches Redis through a proxy that black-holes it (a
  partition: nothing answered, nothing refused), while Redis stays up for the writer's Postal.
  The invalidations of the other's writes never arrive; the near cache serves what it holds
  until the tracking heartbeat is late (`DEAD_AFTER`, 1.5 s without a PONG), then is flushed and
  bypassed, and reads go to the database. The documented bound: an entry served up to that
  long after another process's write, never longer. So stale reads within it are allowed and
  counted apart; one past it misses the target. Reads that cannot reach Redis also share a
  database load in flight without knowing the other process's writes (`cache.policy.fallback`,
  point 4): one that began just before such a write commits answers a reader who came just
  after it, a stale read milliseconds old, within the bound too. On a loaded machine this
  process's proxied Redis reads can time out outside the partition as well (the proxy runs in
  this event loop), so the bound is not tied to the fault's span; the row says how many of its
  stale reads were sent outside it.

  The writer's Postal reaches Redis through a proxy too, one that always passes: the two paths
  from Redis then have the same hop. With the readers' path alone proxied (by this event loop,
  which also runs the writer), a write's reply could reach the writer, and its chase read the
  readers' Postal, before the proxy had passed on that write's invalidation: a stale read made
  by the rig, seen once in a trial run after the partition had healed.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as redis

from postal.cache.transport.tracking import DEAD_AFTER
from postal.observability.metrics import NEAR_CACHE_FLUSHES, NEAR_CACHE_READS
from postal_bench.faults.fault import Evidence, Fault, Observed, Window
from postal_bench.faults.rig import FaultRig
from postal_testing.proxy import FaultProxy

TRACKING_NAME = "postal-tracking"  # the CLIENT SETNAME of Postal's tracking connections
KILL_INTERVAL = 0.25  # s between two rounds of kills while the fault is on


def near_hits(window: Window) -> int:
    """Reads the readers' Postal answered from its near cache in `window`."""
    return round(window.count(NEAR_CACHE_READS, outcome="hit"))


def any_hits(window: Window) -> int:
    """Cache hits of either kind in `window`: from memory, or a Redis GET that hit."""
    return near_hits(window) + window.reads("hit")


async def kill_tracking(client: redis.Redis) -> int:
    """Kill every connection named TRACKING_NAME (both Postals'); how many were killed."""
    killed = 0
    for entry in await client.client_list():
        if entry.get("name") == TRACKING_NAME:
            # CLIENT KILL ID answers how many it killed: 0 when that client went meanwhile.
            killed += int(await client.client_kill_filter(_id=entry["id"]))
    return killed


class TrackingKilled(Fault):
    name = "near-tracking-killed"
    summary = (
        f"near cache on; Redis kills the tracking connections every {KILL_INTERVAL:g} s"
        " while another Postal writes"
    )

    killed = 0

    async def set_up(self, rig: FaultRig) -> None:
        server = await rig.redis()
        rig.use_redis(server.url)
        rig.use_writer_redis(server.url)
        self.url = server.url
        self._killer: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        self._killer = asyncio.create_task(self._kill_until_cancelled())

    async def end(self) -> None:
        if self._killer is not None:
            self._killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._killer

    async def _kill_until_cancelled(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                self.killed += await kill_tracking(client)
                await asyncio.sleep(KILL_INTERVAL)
        finally:
            await client.aclose()

    async def evidence(self, observed: Observed) -> Evidence:
        return {
            "killed": self.killed,
            "flushes_during": observed.during.count(NEAR_CACHE_FLUSHES),
            "writes_during": observed.accepted_writes_during,
            "near_hits_after": near_hits(observed.after),
            "hits_after": any_hits(observed.after),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["killed"] == 0:
            return f"no connection named {TRACKING_NAME} was killed"
        if evidence["flushes_during"] == 0:
            return "the readers' Postal never flushed its near cache: it missed the kills?"
        if evidence["writes_during"] == 0:
            return "no write went through the other Postal while the kills went on"
        if evidence["near_hits_after"] == 0:
            return "the near cache answered no read after the kills stopped"
        return None


class Partitioned(Fault):
    name = "near-partitioned"
    summary = (
        "near cache on; this Postal cut off from Redis (black-holed) while another Postal"
        " writes to it"
    )
    stale_bound = DEAD_AFTER

    proxy: FaultProxy

    async def set_up(self, rig: FaultRig) -> None:
        server = await rig.redis()
        self.proxy = await rig.proxy(server.port)
        rig.use_redis(self.proxy.url)
        writer_path = await rig.proxy(server.port)  # the same hop, never faulted
        rig.use_writer_redis(writer_path.url)

    async def begin(self) -> None:
        await self.proxy.black_hole()

    async def end(self) -> None:
        await self.proxy.pass_through()

    async def evidence(self, observed: Observed) -> Evidence:
        during = observed.during
        return {
            "flushes_during": during.count(NEAR_CACHE_FLUSHES),
            "writes_during": observed.accepted_writes_during,
            "redis_failed_during": during.reads("timeout")
            + during.reads("pool_timeout")
            + during.reads("circuit_open"),
            "near_hits_after": near_hits(observed.after),
            "hits_after": any_hits(observed.after),
        }

    def missing(self, evidence: Evidence) -> str | None:
        if evidence["writes_during"] == 0:
            return "no write went through the other Postal while this one was cut off"
        if evidence["flushes_during"] == 0:
            return "the near cache was never flushed: tracking did not go down?"
        if evidence["redis_failed_during"] == 0:
            return "no cache read timed out or was refused: was Postal cut off at all?"
        return None
