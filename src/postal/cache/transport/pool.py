"""The managed connection pool: the connections a node's operations run on.

Why it is ours: redis-py's asyncio pools have no min idle, max idle, idle time or max lifetime
(redis-py issues #3430, #2992, #1065), and its BlockingConnectionPool is unfair under contention
(100 tasks on 10 connections: most tasks never get one while a few loop). This pool gives:

- a hard cap (`max_size`) with a first-come-first-served wait: a released connection goes to the
  longest waiter, never back to whoever is fastest to grab it; the wait is bounded by the pool
  timeout and by the current operation's deadline (`deadline.current_operation`), and ends in
  `PoolTimeout`;
- dials that belong to the pool: a caller that finds no idle connection queues, and if there is
  room a dial starts; whatever connection is ready first goes to the longest waiter. A caller
  whose deadline expires stops waiting, but the dial goes on (bounded by the dial and read
  timeouts) and its connection joins the pool, so a Redis whose handshake takes longer than a
  GET deadline is still reconnected to. A dial that fails fails the longest waiter;
- `min_idle` connections opened and fully initialised (HELLO, AUTH, SELECT) at start-up and
  refilled in the background, so requests do not dial;
- `max_idle` enforced once a surplus connection has stayed idle for `max_idle_grace` (at
  once, on release, when the grace is 0); idle time and max lifetime (with jitter) enforced by a
  background reaper and at checkout, and lifetime at release: never on a connection in use;
- a `PoolStats` snapshot and a repr that shows it, and a `PoolWaitEvent` for each checkout that
  had to queue (`subscribe_waits`), for the wait-time histogram.

State changes happen in plain synchronous methods (no await between reading and writing pool
state, so no lock is needed on one event loop); closing sockets happens afterwards, in the
background. Counters are plain integers: metrics read `stats()` at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from postal.cache.transport.config import PoolConfig
from postal.cache.transport.connection import Connector, PostalConnection
from postal.cache.transport.deadline import Operation, current_operation
from postal.cache.transport.durations import format_duration
from postal.cache.transport.errors import CacheUnavailable, PoolTimeout
from postal.cache.transport.events import PoolWaitEvent, PoolWaitListener

logger = logging.getLogger("postal.cache.pool")

MAX_REFILL_BACKOFF = 5.0  # seconds between refill attempts while Redis stays unreachable


class CloseReason(StrEnum):
    IDLE_TIME = "idle_time"
    LIFETIME = "lifetime"
    MAX_IDLE = "max_idle"
    ERROR = "error"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class PoolStats:
    role: str
    node: str  # "host:port": which server of the role this pool dials
    max_size: int
    in_use: int
    idle: int
    opening: int  # dials in progress (they count against max_size)
    waiting: int  # callers queued for a connection right now
    waits: int  # checkouts that had to queue, since start
    wait_time: float  # seconds spent queued, summed
    timeouts: int  # queued checkouts that gave up (pool timeout or operation deadline)
    opened: int
    closed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Open connections (in use or idle); dials in progress are `opening`."""
        return self.in_use + self.idle

    def __str__(self) -> str:
        closed = ", ".join(f"{reason} {count}" for reason, count in sorted(self.closed.items()))
        return (
            f"in use {self.in_use}, idle {self.idle}, opening {self.opening},"
            f" total {self.total}/{self.max_size}"
            f" | waits {self.waits} ({format_duration(self.wait_time)}), timeouts {self.timeouts}"
            f" | opened {self.opened}, closed {{{closed}}}"
        )


def total_of(role: str, node: str, pools: list[PoolStats]) -> PoolStats:
    """Several pools' stats summed into one (a role's, over its nodes)."""
    closed: dict[str, int] = {}
    for pool in pools:
        for reason, count in pool.closed.items():
            closed[reason] = closed.get(reason, 0) + count
    return PoolStats(
        role=role,
        node=node,
        max_size=sum(p.max_size for p in pools),
        in_use=sum(p.in_use for p in pools),
        idle=sum(p.idle for p in pools),
        opening=sum(p.opening for p in pools),
        waiting=sum(p.waiting for p in pools),
        waits=sum(p.waits for p in pools),
        wait_time=sum(p.wait_time for p in pools),
        timeouts=sum(p.timeouts for p in pools),
        opened=sum(p.opened for p in pools),
        closed=closed,
    )


class ManagedPool:
    """A bounded, fair pool of redis-py connections to one endpoint, for one role."""

    def __init__(
        self, role: str, connector: Connector, config: PoolConfig, *, node: str = ""
    ) -> None:
        self.role = role
        self.node = node or f"{connector.endpoint.host}:{connector.endpoint.port}"
        self.config = config
        self.connector = connector  # where the pool dials: a tracking connection dials there too
        self._idle: deque[PostalConnection] = deque()  # most recently used on the right
        self._in_use: set[PostalConnection] = set()
        self._waiters: deque[asyncio.Future[PostalConnection]] = deque()
        self._dials: set[asyncio.Task[PostalConnection]] = set()  # len() is "opening"
        self._closing: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._starting = False  # start() under way: a second call must not start a second one
        self._wake = asyncio.Event()
        self._closed = False
        self._waits = 0
        self._wait_time = 0.0
        self._timeouts = 0
        self._opened = 0
        self._closed_by_reason: dict[str, int] = {}
        self._wait_listeners: list[PoolWaitListener] = []
        # Told when a connection is found closed by the server (`Node.on_lost`).
        self.on_lost: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open `min_idle` connections now, then keep the pool topped up in the background.

        A Redis that is down at start-up is not an error: the service starts without its cache,
        and the maintainer keeps trying with a backoff.
        """
        if self._closed:
            raise CacheUnavailable(f"{self.role} pool closed")
        if self._maintainer is not None or self._starting:
            return  # started, or being started (a cluster node warmed twice): one maintainer
        self._starting = True
        refilled = await self._refill()
        if not self._closed:  # closed while warming up: nothing more to keep topped up
            self._maintainer = asyncio.create_task(
                self._maintain(refilled), name=f"postal-pool-{self.role}-{self.node}"
            )

    async def aclose(self) -> None:
        """Close every idle connection now and each in-use one when it comes back; fail waiters."""
        if self._closed:
            return
        self._closed = True  # from here on nothing is handed out, granted or dialled
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(CacheUnavailable(f"{self.role} pool closed"))
        if self._maintainer is not None:
            self._maintainer.cancel()
        dials = list(self._dials)
        for dial in dials:
            dial.cancel()
        await asyncio.gather(
            *dials, *([self._maintainer] if self._maintainer else []), return_exceptions=True
        )
        idle = list(self._idle)
        self._idle.clear()
        for connection in idle:
            self._close_later(connection, CloseReason.SHUTDOWN)
        await self._drain_closing()

    async def get_connection(self) -> PostalConnection:
        """Check out a connection: an idle one at once, else the first one ready, in line."""
        if self._closed:
            raise CacheUnavailable(f"{self.role} pool closed")
        operation = current_operation.get()
        connection = self._take_idle()
        if connection is None:
            connection = await self._wait_in_line(operation)
        else:
            self._in_use.add(connection)
        if operation is not None:
            operation.acquired = True
        return connection

    async def release(self, connection: PostalConnection) -> None:
        self._release(connection)

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> PoolStats:
        return PoolStats(
            role=self.role,
            node=self.node,
            max_size=self.config.max_size,
            in_use=len(self._in_use),
            idle=len(self._idle),
            opening=len(self._dials),
            waiting=self._waiting(),
            waits=self._waits,
            wait_time=self._wait_time,
            timeouts=self._timeouts,
            opened=self._opened,
            closed=dict(self._closed_by_reason),
        )

    def retire_all(self) -> None:
        """Close the idle connections now, and those in use when they come back: the server
        they reach is no longer the one this pool should talk to (demoted by a failover)."""
        while self._idle:
            self._close_later(self._idle.popleft(), CloseReason.ERROR)
        now = self._now()
        for connection in self._in_use:
            connection.retire_at = now

    def subscribe_waits(self, listener: PoolWaitListener) -> None:
        """Call `listener` with a `PoolWaitEvent` after every checkout that queued (it must not
        block); there is one per wait counted in `stats().waits`."""
        self._wait_listeners.append(listener)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __repr__(self) -> str:
        return f"<ManagedPool {self.role} {self.node} [{self.stats()}]>"

    # -- decisions (synchronous: no await between reading and changing state) -----------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _room(self) -> int:
        """How many more connections may be opened without passing the cap."""
        return self.config.max_size - len(self._in_use) - len(self._idle) - len(self._dials)

    def _waiting(self) -> int:
        """Callers still waiting (the line may hold futures already served or given up)."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _pop_live_waiter(self) -> asyncio.Future[PostalConnection] | None:
        """The longest waiter still waiting, removed from the line; None if nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _retire_reason(self, connection: PostalConnection, now: float) -> CloseReason | None:
        """Why a connection must not be used again, or None if it is good."""
        if not connection.is_usable:
            return CloseReason.ERROR
        if connection.retire_at is not None and now >= connection.retire_at:
            return CloseReason.LIFETIME
        idle_time = self.config.idle_time
        if idle_time is not None and now - connection.idle_since >= idle_time:
            return CloseReason.IDLE_TIME
        return None

    def _take_idle(self) -> PostalConnection | None:
        """The most recently used healthy idle connection (so surplus ones age out), if any."""
        now = self._now()
        while self._idle:
            connection = self._idle.pop()
            reason = self._retire_reason(connection, now)
            if reason is None:
                return connection
            self._close_later(connection, reason)
        return None

    def _release(self, connection: PostalConnection, *, fresh: bool = False) -> None:
        """A connection comes back, or is `fresh` from a dial: to the longest waiter, else idle,
        else closed."""
        if connection not in self._in_use:
            logger.warning("%s pool: release of a connection it did not hand out", self.role)
            return
        self._in_use.discard(connection)
        now = self._now()
        reason: CloseReason | None
        if self._closed:
            reason = CloseReason.SHUTDOWN
        elif not connection.is_usable:  # an error or a deadline closed it mid-command
            reason = CloseReason.ERROR
        elif connection.retire_at is not None and now >= connection.retire_at:
            reason = CloseReason.LIFETIME
        elif not fresh and self._closes_surplus_at_once():
            # A used connection the pool would not keep idle is not handed on either: with max
            # idle 0 every operation dials anew (the "before" profile), as go-redis does.
            reason = CloseReason.MAX_IDLE
        else:
            reason = None
        if reason is not None:
            self._close_later(connection, reason)
            self._dial_for_waiters()  # its slot is free: serve whoever waits
            return
        waiter = self._pop_live_waiter()
        if waiter is not None:
            self._in_use.add(connection)
            waiter.set_result(connection)
        elif self._closes_surplus_at_once():
            self._close_later(connection, CloseReason.MAX_IDLE)
        else:  # a surplus above max idle, if any, is closed by the reaper after the grace
            connection.idle_since = now
            self._idle.append(connection)

    def _closes_surplus_at_once(self) -> bool:
        return self.config.max_idle_grace == 0 and len(self._idle) >= self.config.max_idle

    def _dial_for_waiters(self) -> None:
        """Start dials for the waiters that no dial in progress will serve, within the cap."""
        if self._closed:
            return
        waiting = self._waiting()
        for _ in range(min(waiting - len(self._dials), self._room())):
            self._spawn_dial()
        if not waiting:
            self._wake.set()  # nobody waiting: let the maintainer restore min idle

    def _reap(self) -> None:
        """Close idle connections past their idle time or lifetime, or closed by the server.

        Never one in use: those are judged when they come back.
        """
        now = self._now()
        keep: deque[PostalConnection] = deque()
        for connection in self._idle:
            reason = self._retire_reason(connection, now)
            if reason is None:
                keep.append(connection)
            else:
                self._close_later(connection, reason)
        # Idle is used last-in first-out, so the surplus above max idle is the oldest, on the left.
        grace = self.config.max_idle_grace
        while len(keep) > self.config.max_idle and now - keep[0].idle_since >= grace:
            self._close_later(keep.popleft(), CloseReason.MAX_IDLE)
        self._idle = keep

    def _missing_idle(self) -> int:
        wanted = self.config.min_idle - len(self._idle) - len(self._dials)
        return max(0, min(wanted, self._room()))

    # -- I/O ---------------------------------------------------------------------------------

    def _spawn_dial(self) -> asyncio.Task[PostalConnection]:
        """Start a dial owned by the pool; its connection, when ready, goes through `_release`.

        The dial runs outside any caller's operation: its own timeouts bound it, not a deadline
        it is shielded from (inside an operation, socket timers are skipped for the deadline).
        """
        context = contextvars.copy_context()
        context.run(current_operation.set, None)
        dial = asyncio.get_running_loop().create_task(self.connector.open(), context=context)
        self._dials.add(dial)
        dial.add_done_callback(self._dial_done)
        return dial

    def _dial_done(self, dial: asyncio.Task[PostalConnection]) -> None:
        self._dials.discard(dial)
        if dial.cancelled():
            return
        error = dial.exception()
        if error is not None:
            # The longest waiter learns why it gets no connection (refused, DNS, TLS, auth...).
            waiter = self._pop_live_waiter()
            if waiter is not None:
                waiter.set_exception(error)
            return
        connection = dial.result()
        self._opened += 1
        self._in_use.add(connection)
        self._release(connection, fresh=True)  # to the longest waiter, or idle, or closed

    async def _wait_in_line(self, operation: Operation | None) -> PostalConnection:
        """Queue for the next connection ready; start a dial if there is room for one."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        left = operation.deadline_in(started) if operation is not None else float("inf")
        budget = min(self.config.pool_timeout, left)
        self._waits += 1
        if budget <= 0:
            self._timeouts += 1
            self._emit_wait(0.0, served=False)
            raise PoolTimeout(f"{self.role} pool: operation deadline already passed")
        waiter: asyncio.Future[PostalConnection] = loop.create_future()
        self._waiters.append(waiter)
        if self._room() > 0:
            self._dial_for_waiters()
            if operation is not None:
                operation.dialing = True
        # When the operation's deadline comes first, the client's timer for it ends the wait (the
        # same instant); a second timer here would be one more heap entry per queued operation.
        own_timer = budget < left
        timer = loop.call_later(budget, self._expire_waiter, waiter, budget) if own_timer else None
        served = False
        try:
            connection = await waiter
            served = True
            return connection
        except PoolTimeout:
            self._timeouts += 1
            raise
        except asyncio.CancelledError:
            deadline = operation.deadline if operation is not None else None
            if deadline is not None and loop.time() >= deadline:
                self._timeouts += 1
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # served as we left: pass it on
            raise
        finally:
            waited = loop.time() - started
            self._wait_time += waited
            if timer is not None:
                timer.cancel()
            self._emit_wait(waited, served=served)

    def _emit_wait(self, waited: float, *, served: bool) -> None:
        if self._wait_listeners:
            event = PoolWaitEvent(self.role, waited, served, self.node)
            for listener in self._wait_listeners:
                listener(event)

    def _expire_waiter(self, waiter: asyncio.Future[PostalConnection], waited: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                PoolTimeout(
                    f"{self.role} pool: no connection free within {format_duration(waited)}"
                    f" (pool timeout {format_duration(self.config.pool_timeout)},"
                    f" size {self.config.max_size})"
                )
            )

    def _close_later(self, connection: PostalConnection, reason: CloseReason) -> None:
        self._closed_by_reason[reason] = self._closed_by_reason.get(reason, 0) + 1
        if reason is CloseReason.ERROR and connection.closed_by_peer and self.on_lost is not None:
            self.on_lost()  # found dead while idle: no command failed to say so
        if not connection.is_connected:
            return
        task = asyncio.ensure_future(self._close(connection, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, connection: PostalConnection, reason: CloseReason) -> None:
        """Close and wait until the socket is closed (a TLS close is an exchange with the server,
        and `aclose()` must not return with sockets still open); a broken connection is just
        dropped. redis-py bounds the wait by the dial timeout."""
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=reason is CloseReason.ERROR)

    async def _drain_closing(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _refill(self) -> bool:
        """Open connections until `min_idle` are idle; False if a dial failed."""
        if self._closed:
            return True
        dials = [self._spawn_dial() for _ in range(self._missing_idle())]
        if not dials:
            return True
        results = await asyncio.gather(*dials, return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            logger.warning(
                "%s pool: cannot open connections to %s: %s",
                self.role,
                self.node,  # host:port, or sentinel:<service> (the error names the address)
                errors[0],
            )
        return not errors

    async def _maintain(self, refilled: bool) -> None:
        """Reap expired idle connections and restore min idle, every interval or when woken.

        After a failed dial it sleeps with an exponential backoff, ignoring wake-ups, so a dead
        Redis is not dialled in a tight loop. `refilled`: whether start()'s own refill worked.
        """
        interval = self.config.maintenance_interval
        backoff = interval
        while True:
            if refilled:
                backoff = interval
                try:
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                backoff = min(backoff * 2, MAX_REFILL_BACKOFF)
                await asyncio.sleep(backoff)
            self._wake.clear()
            self._reap()
            refilled = await self._refill()
            await self._drain_closing()
