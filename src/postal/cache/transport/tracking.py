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
  arrived in the same turn of the event loop runs, and `has_unread()` can tell a reader, in one
  system call, that bytes are waiting that may hold an invalidation. redis-py reads in a task,
  a turn of the loop later. The parser is hiredis's, the command packer redis-py's.

A node's tracking is *live* while the connection is up, tracking was confirmed, and a PING sent
every `heartbeat` seconds was answered within `dead_after`; a PING not answered in time aborts
the connection. Every time it stops being live, and again when it is confirmed anew, the
listener hears of it (`tracking_changed`): whatever was cached may have missed an invalidation.
A connection that fails (refused, reset, `CLIENT KILL`, a restarted Redis, tracking refused by an
ACL or an old server) is dialled again with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections import deque
from collections.abc import Sequence
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
    ) -> None:
        self.node = node
        self.prefix = prefix
        self.listener = listener
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.confirmed = False
        self.last_pong = 0.0
        self.connects = 0  # tracking confirmed, counted: the first time and each time again
        self.client_id: int | None = None  # the connection's CLIENT ID, while it is up
        self._protocol: _TrackingProtocol | None = None
        self._poll: select.poll | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        loop = asyncio.get_running_loop()
        return self.confirmed and loop.time() - self.last_pong < self.dead_after

    def has_unread(self) -> bool:
        """Whether bytes wait on the connection that the loop has not handed to the protocol
        yet: an invalidation may be among them."""
        poll = self._poll
        return poll is not None and bool(poll.poll(0))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"postal-tracking-{self.node.name}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()

    def lost(self) -> None:
        was_confirmed = self.confirmed
        self.confirmed = False
        self._poll = None
        if was_confirmed:
            self.listener.tracking_changed(False)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._track_once()
                backoff = 0.05  # it was up: the next failure starts over
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timed out, tracking refused: dial again
                logger.warning(
                    "tracking connection to %s failed: %s; near cache bypassed",
                    self.node.name,
                    exc,
                )
            self.lost()
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
            loop = asyncio.get_running_loop()
            assert protocol.transport is not None
            sock = protocol.transport.get_extra_info("socket")
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
            self.last_pong = loop.time()
            self.confirmed = True
            self.connects += 1
            self.listener.tracking_changed(True)
            while not protocol.closed.done():
                await asyncio.sleep(self.heartbeat)
                async with asyncio.timeout(self.dead_after):
                    await protocol.send("PING")
                self.last_pong = loop.time()
        finally:
            if protocol.transport is not None:
                protocol.transport.abort()
            self._protocol = None


class Tracking:
    """Tracking on every node reads go to; live only while every one of them is."""

    def __init__(self, nodes: Sequence[NodeTracking]) -> None:
        self.nodes = list(nodes)

    @property
    def live(self) -> bool:
        return all(node.live for node in self.nodes)

    def has_unread(self) -> bool:
        return any(node.has_unread() for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(node.aclose() for node in self.nodes))
