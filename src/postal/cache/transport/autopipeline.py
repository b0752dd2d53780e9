"""Automatic pipelining of reads: concurrent GETs and MGETs to one node share one connection.

A cache hit through the pool costs a checkout, a write system call, a read system call and a
release; under load those system calls were most of a Redis-served hit's CPU. Here each read
sends its packed command on the one connection and waits on a future; the replies, read as
they come in the protocol's receive callback and parsed by hiredis, go to the waiters in the
order the commands were sent (Redis answers a connection in order). rueidis (Go) and lettuce
(Java) work so; no asyncio Redis client does (redis-py's pipelines are explicit, one caller's
batch), hence this module, modelled on the tracking connection (`tracking`).

When a command is written: at once, or batched into one write at the end of the loop's turn
(`loop.call_soon`). Batching saves a system call per command, but a batched command waits for
the rest of the turn and for what the next turn runs before the flush: on a saturated loop,
milliseconds. So the first `DENSE_TURN` commands of a turn go out at once and the rest are
batched; after a turn of `DENSE_TURN` or more, the whole next turn is batched. Reads a few per
turn (misses among near-cache hits) are sent at once; a flood of Redis hits is written in
batches. Measured (`postal bench seed`'s load, 10% misses): cache GETs 6.7-7.3 ms on average
against 9.2-10.3 ms batched, at the CPU of batching under `postal bench http` with the near
cache off (59-60 µs a request against 59; writing every command at once cost 66-71).

What keeps it honest:
- Deadlines: the executor's deadline cancels a waiter's future; its reply, when it arrives, is
  dropped by its place in the queue (`discarded`), never handed to the next waiter.
- A lost connection (reset, `CLIENT KILL`, a restarted Redis) fails every waiter on it at once
  with redis-py's `ConnectionError` (a `CacheUnavailable` to the caller, as through the pool);
  a connection whose oldest command has gone unanswered for the read timeout is closed, its
  waiters failed with redis-py's `TimeoutError` (a `CacheTimeout`). Then it is dialled again,
  with a backoff, through the pool's `Connector` (DNS cache, Sentinel, TLS, AUTH).
- Head-of-line blocking and bounds: at most `max_in_flight` commands wait on the connection,
  and none is added behind an oldest command already `stale_head` old, nor while the socket's
  output buffer is over `WRITE_BUFFER_LIMIT`. A read refused for any of these, or while the
  connection is down, runs on a pooled connection as before (`submit` returns None): a slow
  reply delays only what was already queued behind it, each of those within its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from postal.cache.transport.config import PipelineConfig, PoolConfig
from postal.cache.transport.connection import Connector
from postal.cache.transport.redis_internals import reply_error_parser

logger = logging.getLogger("postal.cache.autopipeline")

_PARSE_ERROR = reply_error_parser()
WRITE_BUFFER_LIMIT = 1024 * 1024  # bytes the socket may hold unsent before reads go to the pool
DENSE_TURN = 8  # commands in one turn from which the rest, and the next turn's, are batched
FIRST_BACKOFF = 0.05  # seconds before the first redial after a failure; doubles each time
MAX_BACKOFF = 2.0  # seconds between two dials of a connection that keeps failing
CLIENT_NAME = "postal-read-pipeline"


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """One node's read pipeline, counted since start (`RedisClient.pipeline_stats`)."""

    role: str
    node: str
    up: bool  # the connection is dialled and takes commands
    in_flight: int  # commands sent and not yet answered, right now
    commands: int  # commands sent on it
    writes: int  # flushes of the output buffer: one system call each (commands / writes: batch)
    receives: int  # receive callbacks: the replies came in this many reads
    discarded: int  # replies dropped because their waiter's deadline had ended
    bypassed: int  # reads sent to the pool instead: connection down, full, or stale head
    connects: int  # times the connection was dialled and set up
    failures: int  # times it was lost (reset, killed, stalled, refused)


def _pack(args: Sequence[Any]) -> bytes:
    """One read command in the protocol, by hiredis itself: redis-py's packer wraps the same call
    in per-argument Python that cost 1.2 µs of its 1.6 a GET or MGET (measured in-process). A
    read's arguments are the command's name and keys (str or bytes); anything hiredis cannot
    send is redis-py's `DataError`, as through the pool."""
    try:
        packed: bytes = hiredis.pack_command(tuple(args))
    except TypeError as exc:
        raise DataError(str(exc)) from None
    return packed


class _PipelineProtocol(asyncio.Protocol):
    """One multiplexed connection: commands out in batches, replies to waiters in order."""

    def __init__(self, pipeline: ReadPipeline) -> None:
        self._pipeline = pipeline
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_PARSE_ERROR)
        # (waiter, loop time it was queued), oldest first: Redis answers in this order.
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._turn_scheduled = False  # `_end_turn` is due
        self._turn_commands = 0  # commands sent in this turn of the loop
        self._batching = False  # the last turn was dense: batch this one's from the start
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.lost_because: Exception | None = None  # set before an abort we decide on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue `args` and write them at once or at the turn's end (see the module)."""
        packed = _pack(args)  # first: a command that cannot be sent queues no waiter
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self.waiting.append((waiter, self._loop.time()))
        self._turn_commands += 1
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._loop.call_soon(self._end_turn)
        # Never at once while commands wait in the buffer: Redis answers in the order written,
        # and the waiters are queued in the order sent.
        if self._out or self._batching or self._turn_commands > DENSE_TURN:
            self._out.append(packed)
        else:
            self._write([packed])
        return waiter

    def _end_turn(self) -> None:
        self._turn_scheduled = False
        self._batching = self._turn_commands >= DENSE_TURN
        self._turn_commands = 0
        out, self._out = self._out, []
        if out:
            self._write(out)

    def _write(self, chunks: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():  # closing: waiters fail
            transport.writelines(chunks)
            self._pipeline.writes += 1

    def data_received(self, data: bytes) -> None:
        self._pipeline.receives += 1
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:  # a reply nobody asked for: the stream is out of step
                    raise InvalidResponse("reply with no command waiting for it")
                waiter, _ = waiting.popleft()
                if waiter.done():  # its deadline ended: the reply is nobody else's
                    self._pipeline.discarded += 1
                elif isinstance(reply, Exception):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except InvalidResponse as exc:
            self.abort(RedisConnectionError(f"{self._pipeline.node}: protocol error: {exc}"))

    def abort(self, reason: Exception) -> None:
        """Close now; every waiter fails with `reason`."""
        if self.lost_because is None:
            self.lost_because = reason
        if self.transport is not None:
            self.transport.abort()
        else:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.lost_because or RedisConnectionError(
            f"connection to {self._pipeline.node} lost" + (f": {exc}" if exc else "")
        )
        self.lost_because = reason
        waiting, self.waiting = self.waiting, deque()
        for waiter, _ in waiting:
            if not waiter.done():
                waiter.set_exception(reason)
        self._out.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._pipeline.lost(self)

    def head_age(self, now: float) -> float:
        """How long the oldest unanswered command has waited (0 when none)."""
        return now - self.waiting[0][1] if self.waiting else 0.0


class ReadPipeline:
    """The read pipeline to one node: its connection, kept up by a task of its own."""

    def __init__(
        self,
        role: str,
        node: str,
        connector: Connector,
        config: PipelineConfig,
        pool_config: PoolConfig,
    ) -> None:
        self.role = role
        self.node = node
        self._connector = connector
        self._config = config
        self._pool_config = pool_config
        self._protocol: _PipelineProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._first_attempt = asyncio.Event()  # set once the first dial succeeded or failed
        self.client_id: int | None = None  # the connection's CLIENT ID, while it is up
        # Told when a connection that was up is lost, whatever the reason (its node may come
        # back restarted: `Node.on_lost`); not at shutdown.
        self.on_lost: Callable[[], None] | None = None
        self.commands = 0
        self.writes = 0
        self.receives = 0
        self.discarded = 0
        self.bypassed = 0
        self.connects = 0
        self.failures = 0

    def submit(self, args: Sequence[Any]) -> asyncio.Future[Any] | None:
        """Queue `args` (GET or MGET) on the connection: the future of its reply; None when the
        read should go to the pool instead (down, full, stale head, or output backed up)."""
        protocol = self._protocol
        if protocol is None:
            self.bypassed += 1
            if self._task is None and not self._closing:
                self.start()  # a node found after start-up (a cluster's): dial it now
            return None
        waiting = protocol.waiting
        if waiting:
            config = self._config
            if len(waiting) >= config.max_in_flight or (
                protocol.head_age(asyncio.get_running_loop().time()) >= config.stale_head
            ):
                self.bypassed += 1
                return None
            transport = protocol.transport
            if transport is not None and transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                self.bypassed += 1
                return None
        self.commands += 1
        return protocol.send(args)

    @property
    def up(self) -> bool:
        return self._protocol is not None

    @property
    def in_flight(self) -> int:
        protocol = self._protocol
        return 0 if protocol is None else len(protocol.waiting)

    def stats(self) -> PipelineStats:
        return PipelineStats(
            role=self.role,
            node=self.node,
            up=self.up,
            in_flight=self.in_flight,
            commands=self.commands,
            writes=self.writes,
            receives=self.receives,
            discarded=self.discarded,
            bypassed=self.bypassed,
            connects=self.connects,
            failures=self.failures,
        )

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"postal-read-pipeline-{self.node}"
            )

    async def warm(self) -> None:
        """Start, and wait for the first dial to succeed or fail (bounded by the dial and read
        timeouts), so that the first reads after start-up need not go to the pool."""
        self.start()
        limit = self._pool_config.dial_timeout + self._pool_config.read_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._first_attempt.wait()

    def retire(self) -> None:
        """Close the connection (a failover: the server may be a replica now); its waiters fail
        as on any lost connection, and it is dialled again, wherever the node now is."""
        if self._protocol is not None:
            self._protocol.abort(RedisConnectionError(f"{self.node}: connection retired"))

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._protocol is not None:
            self._protocol.abort(RedisConnectionError(f"{self.node}: client closed"))

    def lost(self, protocol: _PipelineProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if not self._closing and self.on_lost is not None:
                self.on_lost()

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<ReadPipeline {self.role} {self.node} {state}, {self.in_flight} in flight>"

    async def _run(self) -> None:
        """Dial, serve until the connection goes, dial again after a backoff; forever."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                await self._serve_once()
                backoff = FIRST_BACKOFF  # it was up: the next failure starts over
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timed out, AUTH refused: dial again
                self._first_attempt.set()
                logger.warning(
                    "read pipeline to %s failed: %s; reads use the pool meanwhile", self.node, exc
                )
            self.failures += 1
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _serve_once(self) -> None:
        """Dial and handshake within the dial timeout, then watch for a stalled head until the
        connection goes."""
        pool_config = self._pool_config
        _, protocol = await self._connector.dial_protocol(lambda: _PipelineProtocol(self))
        assert isinstance(protocol, _PipelineProtocol)
        try:
            endpoint = self._connector.endpoint
            hello: list[str | int] = ["HELLO", 3]
            if endpoint.password is not None:
                hello += ["AUTH", endpoint.username or "default", endpoint.password]
            async with asyncio.timeout(pool_config.dial_timeout + pool_config.read_timeout):
                await protocol.send([*hello, "SETNAME", CLIENT_NAME])
                if endpoint.db:
                    await protocol.send(["SELECT", endpoint.db])
                client_id = await protocol.send(["CLIENT", "ID"])
            self._protocol = protocol
            self.client_id = client_id
            self.connects += 1
            self._first_attempt.set()
            await self._watch(protocol)
        finally:
            if self._protocol is protocol:
                self._protocol = None
            self.client_id = None
            if not protocol.closed.done():
                protocol.abort(RedisConnectionError(f"{self.node}: read pipeline stopped"))

    async def _watch(self, protocol: _PipelineProtocol) -> None:
        """Close the connection when its oldest command has waited the read timeout: a Redis
        that stopped answering (black-holed) would otherwise hold the queue, and the readers
        after it would all go to the pool."""
        read_timeout = self._pool_config.read_timeout
        loop = asyncio.get_running_loop()
        while not protocol.closed.done():
            await asyncio.wait([protocol.closed], timeout=min(read_timeout / 4, 0.5))
            if protocol.head_age(loop.time()) >= read_timeout:
                protocol.abort(RedisTimeoutError(f"{self.node}: no reply within the read timeout"))
