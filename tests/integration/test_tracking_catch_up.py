"""`NodeTracking.catch_up` against a server on a real socket: what waits unread is applied in
place, and a stream that cannot be parsed ends the connection rather than the request.

The server is a few lines of RESP3 in a thread of its own (blocking sockets), so that it can send
while this test's event loop is not running: the bytes then wait unread in the socket, as a push
does that came after the loop's poll read a request and before the request's task ran.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from postal.cache import NO_TLS, TUNED, DnsCache, RedisEndpoint
from postal.cache.transport.nodes import NodeFactory
from postal.cache.transport.tracking import NodeTracking

REPLIES = {  # the handshake `NodeTracking` sends, answered in RESP3
    b"HELLO": b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n",
    b"CLIENT": None,  # CLIENT ID, then CLIENT TRACKING: see `_reply`
    b"PING": b"+PONG\r\n",
}


@dataclass
class Listener:
    pushed: list[Sequence[bytes] | None] = field(default_factory=list)
    changes: list[bool] = field(default_factory=list)

    def invalidated(self, keys: Sequence[bytes] | None) -> None:
        self.pushed.append(keys)

    def tracking_changed(self, live: bool) -> None:
        self.changes.append(live)


class ScriptedRedis:
    """Accepts one connection, answers the tracking handshake and PINGs, and sends `send(...)`
    bytes when told, from its own thread."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._client: socket.socket | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Redis: no Nagle delay
        self._client = client
        self._ready.set()
        buffer = b""
        with client:
            while True:
                try:
                    data = client.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n" in buffer and buffer.startswith(b"*"):
                    command, buffer = _one_command(buffer)
                    if command is None:
                        break
                    client.sendall(_reply(command))

    def send(self, payload: bytes) -> None:
        assert self._ready.wait(5)
        assert self._client is not None
        self._client.sendall(payload)

    def close(self) -> None:
        self._listener.close()
        if self._client is not None:
            self._client.close()
        self._thread.join(5)


def _one_command(buffer: bytes) -> tuple[list[bytes] | None, bytes]:
    """The first RESP array of bulk strings in `buffer`, and the rest; None if incomplete."""
    lines = buffer.split(b"\r\n")
    count = int(lines[0][1:])
    if len(lines) < 1 + 2 * count + 1:
        return None, buffer
    words = [lines[2 + 2 * i] for i in range(count)]
    rest = b"\r\n".join(lines[1 + 2 * count :])
    return words, rest


def _reply(command: list[bytes]) -> bytes:
    name = command[0].upper()
    if name == b"CLIENT":
        return b":7\r\n" if command[1].upper() == b"ID" else b"+OK\r\n"
    reply = REPLIES.get(name)
    return reply if reply is not None else b"-ERR unknown\r\n"


@pytest.fixture
def server() -> Iterator[ScriptedRedis]:
    scripted = ScriptedRedis()
    try:
        yield scripted
    finally:
        scripted.close()


async def confirmed(server: ScriptedRedis, listener: Listener) -> NodeTracking:
    endpoint = RedisEndpoint(host="127.0.0.1", port=server.port, db=0, tls=False)
    node = NodeFactory("read", TUNED, DnsCache(), NO_TLS).build(endpoint, name="scripted")
    tracking = NodeTracking(node, "p:", listener, heartbeat=5.0, dead_after=10.0)
    tracking.start()
    async with asyncio.timeout(5):
        while not tracking.live:  # noqa: ASYNC110 - the state is the tracking task's
            await asyncio.sleep(0.01)
    return tracking


def wait_unread() -> None:
    """Block this thread, and so the loop, while the bytes `send` put on loopback (already in
    the kernel when it returned) reach our socket: nothing here reads them meanwhile."""
    time.sleep(0.05)


async def test_a_push_waiting_unread_is_applied_in_place(server: ScriptedRedis) -> None:
    listener = Listener()
    tracking = await confirmed(server, listener)
    try:
        server.send(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\np:k\r\n")
        wait_unread()
        assert listener.pushed == []  # the loop has not run since
        assert tracking.catch_up()
        assert listener.pushed == [[b"p:k"]]
        assert tracking.live
    finally:
        await tracking.aclose()


async def test_a_stream_that_cannot_be_parsed_ends_the_connection_not_the_request(
    server: ScriptedRedis,
) -> None:
    listener = Listener()
    tracking = await confirmed(server, listener)
    try:
        server.send(b"!garbage that is no RESP\r\n")
        wait_unread()
        assert tracking.catch_up() is False  # no exception: the read skips the near cache
        async with asyncio.timeout(5):
            while tracking.live:  # noqa: ASYNC110 - the state is the tracking task's
                await asyncio.sleep(0.01)
        assert listener.changes[-1] is False  # lost: everything held was dropped
    finally:
        await tracking.aclose()
