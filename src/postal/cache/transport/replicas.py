"""Invalidations that reach the replicas before the write returns: WAIT, bounded by the deadline.

When the read role reads a replica, an invalidation that has reached the primary but not yet the
replica leaves a window in which a reader, starting after the write has returned, still gets the
old value from the replica. Replication on loopback lags by well under a millisecond, but under
load, or when a replica is slow, the window is real. So when reads and writes go to different
endpoints, an invalidation is sent with `WAIT <replicas> <ms>` on the same connection (WAIT
counts the acknowledgements of that connection's own writes):

- `<replicas>` is every replica attached to the primary, whatever its state: the
  `connected_slaves` of `INFO replication`. Not `ROLE`, which lists only replicas the primary
  has put online, while a replica that is still syncing may already answer reads (seen here:
  1 re-sync in 15). WAIT counts only replicas that acknowledge, so a syncing one gives a short
  count, `ReplicasBehind`, and the retry, until it is online. A count of one or more is trusted
  for `refresh` (one round trip a second under steady writes), so a replica lost is known
  within that time. A count of 0 is never trusted: the write asks again, one more round trip
  while no replica is attached. A replica that comes back (restarted, resynced) must be waited
  for from its first write on: the fault matrix caught one stale read in the second after a
  killed replica rejoined, while a count of 0 was still believed. A primary without replicas
  skips the WAIT. The question runs in a task of its own, outside any caller's deadline and
  bounded by `ASK_TIMEOUT`, and one caller giving up does not cancel it for the others;
- `<ms>` leaves a quarter of the operation's deadline (at least 20 ms) for the reply to come
  back, plus one tick of Redis's clock: Redis ends a blocked WAIT on its cron tick, every
  100 ms at the default `hz` of 10 (measured: WAIT 150 returned after 229 ms, WAIT 50 after
  100 ms). So a replica that does not confirm in time gives a short count, not a timeout of the
  whole operation (which would count against the breaker: the primary did answer). Under the
  default SET deadline of 200 ms that is WAIT 50;
- a short count raises `ReplicasBehind` after the operation: the invalidation is on the primary,
  so the breaker records a success, and the `Invalidator` treats it like any failed
  invalidation (this process bypasses the key, and the retry, WAIT included, runs until the
  replicas confirm). Waits are counted by outcome in `ReplicaWaitStats`.

Reads go only to the replicas fit to serve them (`online()`, used by `RedisClient`): those the
primary's INFO replication has listed as `state=online` for at least `refresh`. A replica
restarted, re-syncing, or cut off from the primary may hold values whose invalidations it never
received; and one that has just finished its sync still applies the writes that came after its
snapshot. The rules for when that list is not known:

- before the first answer ever (at start-up, or while the first question keeps failing), every
  replica may serve: nothing says any is behind, and reads would otherwise all go to the
  database. The first answer's online replicas count as online for long, for the same reason;
- a failed question keeps the last answer, but only for `2 x refresh` after it was given
  (`STALE_AFTER` refreshes): past that, with the question failing or still running (a primary
  busy in a Lua script answers INFO late), or after a quiet spell in which nobody asked, no
  replica is fit (reads go to the database) until a new answer comes. `online()` starts that
  question itself; it never waits for it;
- an answer that comes more than `2 x refresh` after the one before cannot vouch for the time in
  between (a replica may have been cut off and re-synced unseen): every replica it lists counts
  as online from then on, and waits `refresh` like a new one;
- a replica this process lost a connection to (`lost`: reset, closed, refused) may have been
  restarted, and a restarted replica serves what it loaded from disk, or its old data set while
  it re-syncs, before the primary has listed it as anything. Left to the answers alone, it
  would serve for up to `refresh` from an answer given before the restart (the read pipeline
  dials it again within 50 ms). So it is unfit from the loss on, until an answer to a question
  asked after the loss lists it online, and then waits `refresh` like a new one. The next
  question is asked at once.

Written by hand: redis-py sends WAIT but leaves knowing how many replicas to wait for, and what
to do when they do not answer, to the caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from postal.cache.transport.deadline import current_operation
from postal.cache.transport.errors import CacheError

REFRESH = 1.0  # seconds a count of one or more replicas is trusted
ASK_TIMEOUT = 2.0  # seconds an INFO replication may take (it runs outside any deadline)
REPLY_MARGIN = 0.020  # seconds, at least, kept for WAIT's reply to come back within the deadline
SERVER_TICK = 0.100  # seconds: how late Redis may end a WAIT (one cron tick at hz 10)
UNBOUNDED_WAIT = 1.0  # seconds WAIT may take when the operation has no deadline
STALE_AFTER = 2  # refreshes after which the last list of online replicas is no longer believed


class ReplicasBehind(CacheError):
    """The primary took the invalidation, but not every replica confirmed it in time."""


@dataclass(frozen=True, slots=True)
class ReplicaWaitStats:
    confirmed: int  # WAITs every replica answered in time
    behind: int  # WAITs that came back short: ReplicasBehind was raised
    skipped: int  # invalidations sent with no WAIT: the primary had no replicas
    replicas: int  # replicas attached to the primary at the last INFO replication


def wait_milliseconds(limit: float | None) -> int:
    """WAIT's timeout for an operation whose deadline is `limit` seconds: never 0 (which would
    make WAIT block until every replica answers, however long)."""
    if limit is None:
        return int(UNBOUNDED_WAIT * 1000)
    return max(1, int((limit - max(REPLY_MARGIN, limit / 4) - SERVER_TICK) * 1000))


def wait_commands(wanted: int, wait_ms: int) -> list[tuple[str, ...] | tuple[str, int, int]]:
    """What follows an invalidation on its connection: WAIT for `wanted` replicas, then INFO
    replication, to check no replica attached that the count left out (`ReplicaWait.check`)."""
    return [("WAIT", wanted, wait_ms), ("INFO", "replication")]


def replicas_attached(reply: Any) -> int:
    """`connected_slaves` in an INFO replication reply: replicas in any state; 0 if absent."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    found = _CONNECTED_REPLICAS.search(text)
    return int(found.group(1)) if found else 0


_CONNECTED_REPLICAS = re.compile(r"^connected_slaves:(\d+)\s*$", re.MULTILINE)
_REPLICA_LINE = re.compile(r"^slave\d+:ip=([^,]+),port=(\d+),state=([a-z_]+)", re.MULTILINE)


def replicas_online(reply: Any) -> frozenset[tuple[str, int]]:
    """(ip, port) of each replica INFO replication lists as `state=online`: fully synced, and
    streaming the primary's writes."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return frozenset(
        (ip, int(port)) for ip, port, state in _REPLICA_LINE.findall(text) if state == "online"
    )


class ReplicaWait:
    """The replica count a write must wait for (cached) and the counts of outcomes.

    `info` runs INFO replication on a write-role connection; `enabled` False makes every count 0
    (reads go to the primary itself, so no replica can serve them stale).
    """

    def __init__(
        self,
        info: Callable[[], Awaitable[Any]],
        *,
        enabled: bool,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._info = info
        self.enabled = enabled
        self._refresh = refresh
        self._clock = clock
        self._replicas = 0
        # Replica (ip, port) -> since when the primary has listed it online without a break;
        # None: never answered yet.
        self._online_since: dict[tuple[str, int], float] | None = None
        self._online_at = float("-inf")  # when the last answer came
        self._next_question_at = float("-inf")  # when `online()` may ask again
        self._known_until = float("-inf")
        # Replica (ip, port) -> the number of the last loss of a connection to it (`lost`); it
        # stays unfit until an answer to a question asked after that loss lists it. Numbers,
        # not times: "asked after" must hold even where the clock did not move in between.
        # One entry per address of the configured replicas at most.
        self._lost: dict[tuple[str, int], int] = {}
        self._losses = 0
        self._asking: asyncio.Future[int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._confirmed = self._behind = self._skipped = 0

    def stats(self) -> ReplicaWaitStats:
        return ReplicaWaitStats(self._confirmed, self._behind, self._skipped, self._replicas)

    async def replicas(self) -> int:
        """How many replicas to wait for; asks INFO replication when the last answer is older
        than `refresh`, or was 0 (concurrent callers share one question)."""
        if not self.enabled:
            return 0
        if self._clock() < self._known_until:
            return self._replicas
        asking = self._asking if self._asking is not None else self._start_asking()
        # Shielded: one caller's deadline must not cancel the question the others wait for.
        return await asyncio.shield(asking)

    def _start_asking(self) -> asyncio.Future[int]:
        # Outside the caller's operation: inside one, the connection skips its socket
        # timeouts for the caller's deadline, and a shielded question would then have none.
        context = contextvars.copy_context()
        context.run(current_operation.set, None)
        asking = asyncio.get_running_loop().create_task(self._ask(), context=context)
        asking.add_done_callback(self._asked)
        self._asking = asking
        return asking

    def online(self) -> frozenset[tuple[str, int]] | None:
        """The replicas fit to read from: listed online by the primary in its answers for at
        least `refresh` (see the module for the rules). None before the first answer ever: any
        replica may serve. Empty when the last answer is older than `STALE_AFTER` refreshes
        (the questions since failed, or none was asked): none may serve until a new answer.
        Asks again in the background when the last answer is older than `refresh`, at most
        once per `refresh` while the questions fail."""
        now = self._clock()
        if now >= self._next_question_at and self._asking is None:
            self._start_asking()
        if self._online_since is None:
            return None
        if now - self._online_at > STALE_AFTER * self._refresh:
            return frozenset()
        settled = now - self._refresh
        return frozenset(r for r, since in self._online_since.items() if since <= settled)

    def lost(self, replicas: Iterable[tuple[str, int]]) -> None:
        """A connection to these replicas (ip, port) was lost: they may come back restarted,
        with data that missed invalidations. Unfit from now until an answer to a question asked
        after now lists them online, and `refresh` after that (see the module); asks at once."""
        self._losses += 1
        for replica in replicas:
            self._lost[replica] = self._losses
            if self._online_since is not None:
                self._online_since.pop(replica, None)
        self._next_question_at = self._clock()

    def watch(self) -> None:
        """Ask INFO replication every `refresh` in the background, from now until `close`: for
        a process whose reads come from replicas, so that `online()` stays current through
        quiet spells (reads seconds apart would otherwise each find the answer too old, go to
        the database, and only start a question). One INFO a second per process."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="postal-replica-watch"
            )

    async def _watch(self) -> None:
        while True:
            if self._asking is None:
                self._start_asking()
            await asyncio.sleep(self._refresh)

    def close(self) -> None:
        """Cancel a question in flight (at shutdown)."""
        if self._asking is not None:
            self._asking.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def check(self, replies: Sequence[Any], wanted: int, *, where: str, waited_ms: int) -> None:
        """Count the replies of `wait_commands` (WAIT's, then INFO replication's): confirmed
        when at least `wanted` replicas acknowledged and no more than `wanted` were attached
        once WAIT returned; else ReplicasBehind.

        The second condition: WAIT n is satisfied by any n replicas. If a replica attached
        since the count was taken (a restarted one re-syncing), the acknowledgements may have
        come from it while a replica that serves reads had not applied the invalidation yet
        (seen: about a second of old reads from the lagging one). Then the count is updated
        and the invalidation retried, waiting for all of them."""
        acknowledged = int(replies[0])
        attached = replicas_attached(replies[1])
        if acknowledged >= wanted and attached <= wanted:
            self._confirmed += 1
            return
        self._behind += 1
        self._known_until = float("-inf")  # a replica gone or come: ask again next time
        if attached > wanted:
            raise ReplicasBehind(
                f"{where}: {attached} replicas attached, the invalidation waited for {wanted}"
            )
        raise ReplicasBehind(
            f"{where}: {acknowledged} of {wanted} replicas confirmed the invalidation"
            f" within {waited_ms} ms"
        )

    def skipped(self) -> None:
        self._skipped += 1

    async def _ask(self) -> int:
        losses_seen = self._losses  # losses numbered up to this one happened before asking
        async with asyncio.timeout(ASK_TIMEOUT):
            reply = await self._info()
        self._replicas = replicas_attached(reply)
        self._note_online(replicas_online(reply), losses_seen)
        if self._replicas:  # none: asked again next time (see the module)
            self._known_until = self._clock() + self._refresh
        return self._replicas

    def _note_online(self, online: frozenset[tuple[str, int]], losses_seen: int) -> None:
        now = self._clock()
        lost = self._lost
        # A replica lost after this question was asked: the answer may predate its restart.
        online = frozenset(r for r in online if lost.get(r, 0) <= losses_seen)
        # Lost before it was asked, and listed: back, and new from now (not in `before`).
        back = {r for r in online if r in lost}
        for replica in back:
            del lost[replica]
        before = self._online_since
        if before is None:  # the first answer ever: see the module
            self._online_since = {r: now if r in back else float("-inf") for r in online}
        elif now - self._online_at > STALE_AFTER * self._refresh:  # a gap: all new from now
            self._online_since = dict.fromkeys(online, now)
        else:
            self._online_since = {replica: before.get(replica, now) for replica in online}
        self._online_at = now
        self._next_question_at = now + self._refresh

    def _asked(self, future: asyncio.Future[int]) -> None:
        self._asking = None
        if not future.cancelled() and future.exception() is not None:
            # Retrieved here (the callers awaiting it re-raise it). The last answer stays, and
            # stops being believed `STALE_AFTER` refreshes after it came (see `online`).
            self._next_question_at = self._clock() + self._refresh
