"""Server-assisted invalidation: Redis tells this process which keys changed (CLIENT TRACKING).

Each server that reads go to gets one connection of its own, in RESP3, with
`CLIENT TRACKING ON BCAST PREFIX <prefix>`: Redis then pushes `invalidate [keys]` to it whenever
a key under the prefix changes (written, deleted, expired, evicted), whoever changed it, and
`invalidate null` on FLUSHALL and FLUSHDB.

- BCAST rather than the default mode: the default mode tracks the keys *this connection* read,
  and reads go over the pools' many connections; BCAST needs no bookkeeping in Redis per key and
  no REDIRECT on every pooled connection. Its cost, a push for every change under the prefix,
  is one small message per write to each Postal process.
- RESP3 pushes on the tracking connection itself rather than RESP2's REDIRECT to a subscribed
  connection: one connection, one parser.
- Hand-written rather than redis-py's connection: the pushes are applied in the protocol's
  receive callback (`data_received`), synchronously, so that they land before any request that
  arrived in the same turn of the event loop runs; and `catch_up()` applies, before a hit is
  served, whatever bytes wait on the socket that the loop has not handed over yet: an
  invalidation may be among them, sent before a write returned to a client who now reads. It
  reads them itself, from a duplicate of the socket's descriptor (one `poll` when nothing
  waits), rather than have the reader skip the near cache: under a steady stream of
  invalidations (every fill is a write under the prefix) something nearly always waits, and
  the near cache was then skipped for most reads. Over TLS the bytes cannot be read beside the
  transport, and the reader skips the near cache as before. redis-py reads in a task, a turn of
  the loop later. The parser is hiredis's, the command packer redis-py's.

A node's tracking is *live* while the connection is up, tracking was confirmed, and a PING sent
every `heartbeat` seconds was answered within `dead_after`; a PING not answered in time aborts
the connection. Every time it stops being live, and again when it is confirmed anew, the
listener hears of it (`tracking_changed`): whatever was cached may have missed an invalidation.
A connection that fails (refused, reset, `CLIENT KILL`, a restarted Redis, tracking refused by an
ACL or an old server) is dialled again with a backoff.

Which nodes are tracked:

- `Tracking`: a fixed set, for a role on fixed servers (one server, replicas, Sentinel's choice
  behind one node): the nodes a read may go to never change.
- `FollowingTracking`: a Redis Cluster's read role, whose reads go to the master owning each
  key's slot, and whose masters come and go with the slot table. The role tells it the nodes a
  read may go to every time the table may have changed (`ClusterRole.watch_nodes`), *before* a
  read can reach a node it did not name before: a node that joins gets a tracking connection,
  one that leaves has its own stopped. Every change flushes, and a joining node is not live
  until its tracking is confirmed (which flushes again), so no entry is ever served while a
  node that may own its key is untracked, and none read before the change survives it: a
  slot moved to a new master, a replica promoted by a failover. The role pushes rather than
  this polling the table because the change must be seen before the reply that follows it
  (a MOVED, an ASK) is stored, in the same task. A cluster master's heartbeat is `ROLE`
  rather than PING, and tracking confirmed only on a master: a master demoted while still up
  (a manual failover) keeps its connection, and would otherwise stay live while the slot
  table still names it and its keys are written on the new master. And each time a master's
  tracking connection ends or cannot be made (`on_down`), the slot table is read again (at
  most once a second): a failover is then followed even when no read meets the failed master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import hiredis

from postal.cache.transport.nodes import Node
from postal.cache.transport.redis_internals import new_command_packer

logger = logging.getLogger("postal.cache.tracking")

_PACKER = new_command_packer()
INVALIDATE = b"invalidate"
HEARTBEAT = 0.5  # seconds between two PINGs on a live tracking connection
DEAD_AFTER = 1.5  # seconds without a PONG after which tracking is not live
MAX_BACKOFF = 2.0  # seconds between two dials of a tracking connection that keeps failing
CATCH_UP_READS = 8  # reads of the socket one `catch_up` makes at most; more waiting: skip
CATCH_UP_CHUNK = 65536  # bytes a read takes at most


class NotPrimary(ConnectionError):
    """A node tracked as a cluster master answered ROLE as something else: it was demoted."""


class TrackingListener(Protocol):
    def invalidated(self, keys: Sequence[bytes] | None) -> None:
        """These keys changed (None: all of them: FLUSHALL, FLUSHDB). Called synchronously."""

    def tracking_changed(self, live: bool) -> None:
        """A node's tracking stopped being live, or was confirmed anew."""


class _TrackingProtocol(asyncio.Protocol):
    """Parses what the server sends: pushes go to the listener at once, replies to the oldest
    command waiting for one."""

    def __init__(self, tracking: NodeTracking) -> None:
        self._tracking = tracking
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (message := self._reader.gets()) is not False:
            if isinstance(message, list) and message and message[0] == INVALIDATE:
                self._tracking.listener.invalidated(message[1])
            elif self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    if isinstance(message, Exception):
                        waiter.set_exception(message)
                    else:
                        waiter.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("tracking connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._tracking.lost()

    def send(self, *command: str | int | bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.transport.writelines(_PACKER.pack(*command))
        return waiter


class NodeTracking:
    """The tracking connection to one node, kept up by a task of its own."""

    def __init__(
        self,
        node: Node,
        prefix: str,
        listener: TrackingListener,
        *,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
        expect_primary: bool = False,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.prefix = prefix
        self.listener = listener
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        # A cluster master: confirmed, and kept live, only while it answers ROLE as a master.
        self.expect_primary = expect_primary
        # Called each time the connection ends or cannot be made (a cluster re-reads its slots).
        self._on_down = on_down
        self.confirmed = False
        self.last_pong = 0.0
        # Tracking confirmed, and a heartbeat answered less than `dead_after` seconds ago. A plain
        # attribute because every near-cache hit reads it: set when tracking is confirmed and at
        # each heartbeat answered, cleared when the connection goes or by a timer at
        # `last_pong + dead_after` (`_lapse`), so a hit reads a flag, not a clock.
        self.live = False
        self._lapse: asyncio.TimerHandle | None = None
        self.connects = 0  # tracking confirmed, counted: the first time and each time again
        self.client_id: int | None = None  # the connection's CLIENT ID, while it is up
        self._protocol: _TrackingProtocol | None = None
        self._poll: select.poll | None = None
        # A duplicate of the connection's socket, for `catch_up` to read what the loop has not
        # yet: its own descriptor, so it can never be another connection's after a close. None
        # while down, and over TLS.
        self._unread: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def _answered(self, loop: asyncio.AbstractEventLoop) -> None:
        """A heartbeat (or the confirmation) was answered just now: live until `dead_after`
        from now, unless answered again."""
        self.last_pong = loop.time()
        self.live = True
        if self._lapse is None:
            self._lapse = loop.call_at(self.last_pong + self.dead_after, self._check_lapse)

    def _check_lapse(self) -> None:
        """The timer: no answer for `dead_after` seconds ends `live`; else wait for the new
        deadline. Timers run before the loop starts the tasks of the requests that arrived
        with them, so no hit is served past the deadline in the same turn."""
        loop = asyncio.get_running_loop()
        due = self.last_pong + self.dead_after
        if loop.time() >= due:
            self._lapse = None
            self.live = False
        else:
            self._lapse = loop.call_at(due, self._check_lapse)

    def catch_up(self) -> bool:
        """Apply now what waits unread on the connection (see the module); whether nothing
        is left unread. False over TLS, at the connection's end, or when more keeps coming
        than `CATCH_UP_READS` reads take: the caller then skips the near cache."""
        poll = self._poll
        if poll is None or not poll.poll(0):
            return True
        unread, protocol = self._unread, self._protocol
        if unread is None or protocol is None:
            return False
        try:
            for _ in range(CATCH_UP_READS):
                data = unread.recv(CATCH_UP_CHUNK)
                if not data:
                    return False  # the server closed it: the transport sees the end next
                protocol.data_received(data)
        except (BlockingIOError, InterruptedError):
            return True  # all read and applied
        except OSError:
            return False  # reset: the transport sees the error next
        except hiredis.ProtocolError:  # a stream that cannot be parsed: this connection is done
            logger.warning("tracking connection to %s sent what cannot be parsed", self.node.name)
            if protocol.transport is not None:
                protocol.transport.abort()  # lost: flushed, and dialled again
            return False
        return not poll.poll(0)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"postal-tracking-{self.node.name}")

    def stop(self) -> None:
        """Stop tracking now (the task is cancelled, the connection aborted); `aclose` waits
        for the task to end."""
        if self._task is not None:
            self._task.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()

    async def aclose(self) -> None:
        self.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lost(self) -> None:
        was_confirmed = self.confirmed
        self.confirmed = False
        self.live = False
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        self._poll = None
        self._close_unread()
        if was_confirmed:
            self.listener.tracking_changed(False)

    def _close_unread(self) -> None:
        # The duplicate keeps the socket open: closed with the connection, never after.
        unread, self._unread = self._unread, None
        if unread is not None:
            unread.close()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            connects = self.connects
            try:
                await self._track_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timed out, tracking refused: dial again
                logger.warning(
                    "tracking connection to %s failed: %s; near cache bypassed",
                    self.node.name,
                    exc,
                )
            if self.connects != connects:
                backoff = 0.05  # it was up: the next failure starts over
            self.lost()
            if self._on_down is not None:
                self._on_down()
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _track_once(self) -> None:
        """Dial, confirm tracking, then PING until the connection goes."""
        connector = self.node.pool.connector
        _, protocol = await connector.dial_protocol(lambda: _TrackingProtocol(self))
        assert isinstance(protocol, _TrackingProtocol)
        self._protocol = protocol
        try:
            endpoint = self.node.endpoint
            hello: list[str | int] = ["HELLO", 3]
            if endpoint.password is not None:
                hello += ["AUTH", endpoint.username or "default", endpoint.password]
            async with asyncio.timeout(self.dead_after):
                await protocol.send(*hello, "SETNAME", "postal-tracking")
                self.client_id = await protocol.send("CLIENT", "ID")
                prefix = ["PREFIX", self.prefix] if self.prefix else []  # none: every key
                await protocol.send("CLIENT", "TRACKING", "ON", "BCAST", *prefix)
                if self.expect_primary:
                    await self._beat(protocol)  # a replica's tracking is not a master's
            loop = asyncio.get_running_loop()
            assert protocol.transport is not None
            sock = protocol.transport.get_extra_info("socket")
            if protocol.transport.get_extra_info("sslcontext") is None:
                self._unread = sock.dup()
                self._unread.setblocking(False)
                descriptor = self._unread.fileno()
            else:
                descriptor = sock.fileno()  # TLS: polled only (`catch_up` says False)
            self._poll = select.poll()
            self._poll.register(descriptor, select.POLLIN)
            self.confirmed = True
            self._answered(loop)
            self.connects += 1
            self.listener.tracking_changed(True)
            while True:
                # Woken by the connection's end too, so a killed connection is dialled again
                # at once rather than after the heartbeat's sleep.
                await asyncio.wait((protocol.closed,), timeout=self.heartbeat)
                if protocol.closed.done():
                    raise ConnectionError("connection closed")
                async with asyncio.timeout(self.dead_after):
                    await self._beat(protocol)
                self._answered(loop)
        finally:
            self._poll = None
            self._close_unread()
            if protocol.transport is not None:
                protocol.transport.abort()
            self._protocol = None

    async def _beat(self, protocol: _TrackingProtocol) -> None:
        """One heartbeat: PING; for a cluster master, ROLE, which must still say master."""
        if not self.expect_primary:
            await protocol.send("PING")
            return
        role = await protocol.send("ROLE")
        if not role or role[0] != b"master":
            raise NotPrimary(f"{self.node.name} is no longer a master")


class Tracking:
    """Tracking on a fixed set of nodes, those reads go to; live only while every one of them
    is (and never while there is none)."""

    def __init__(self, nodes: Sequence[NodeTracking]) -> None:
        self.nodes = list(nodes)
        self._started = False
        self._caught_up = False  # nothing was left unread when asked earlier in this loop turn

    @property
    def live(self) -> bool:
        nodes = self.nodes
        if not nodes:
            return False
        for node in nodes:  # noqa: SIM110 - a loop, not all() and its generator: every hit runs this
            if not node.live:
                return False
        return True

    def catch_up(self) -> bool:
        """`NodeTracking.catch_up` on every node: whether nothing is left unread on any.

        Once per turn of the event loop: a request's task runs in a turn after the one in
        which its bytes were read, so every invalidation that reached this host before the
        request did was either ready at the poll that read the request (and applied then, in
        the receive callback) or is read by the first `catch_up` of the turn. Asking again for
        each request of the turn cost a `poll` system call each, 6% of a busy worker's CPU.
        The turn's end is marked by a callback that runs before anything read after it."""
        if self._caught_up:
            return True
        caught_up = True
        for node in self.nodes:
            caught_up = node.catch_up() and caught_up  # every node, even after one fails
        if caught_up:
            self._caught_up = True
            asyncio.get_running_loop().call_soon(self._next_turn)
        return caught_up

    def _next_turn(self) -> None:
        self._caught_up = False

    def start(self) -> None:
        self._started = True
        for node in self.nodes:
            node.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(node.aclose() for node in self.nodes))


class FollowingTracking(Tracking):
    """Tracking on the nodes a cluster's reads may go to, as they change (`follow`)."""

    def __init__(self, track: Callable[[Node], NodeTracking], listener: TrackingListener) -> None:
        super().__init__([])
        self._track = track  # a node's tracking connection, not started
        self._listener = listener
        self._stopping: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self._closed = False
        self.changes = 0  # times the set of tracked nodes changed

    def follow(self, nodes: Sequence[Node]) -> None:
        """Track exactly `nodes` (by name) from now on: start the newcomers' connections, stop
        those of the nodes gone. Any change flushes: whatever was cached may be of a key whose
        owner changed, and a newcomer is not live until its tracking is confirmed."""
        if self._closed:
            return
        kept = {tracked.node.name: tracked for tracked in self.nodes}
        wanted = {node.name: node for node in nodes}
        gone = [tracked for name, tracked in kept.items() if name not in wanted]
        new = [self._track(node) for name, node in wanted.items() if name not in kept]
        if not gone and not new:
            return
        # From here on `live` waits for the newcomers' confirmation.
        self.nodes = [tracked for name, tracked in kept.items() if name in wanted] + new
        self.changes += 1
        self._listener.tracking_changed(False)
        for tracked in gone:
            tracked.stop()
            if tracked.started:
                stopping = asyncio.get_running_loop().create_task(tracked.aclose())
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
        if self._started:
            for tracked in new:
                tracked.start()

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()
        await asyncio.gather(*self._stopping)
