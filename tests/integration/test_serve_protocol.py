"""The bounded protocol's finer rules (`cli/serve_protocol.py`), on a real uvicorn socket with an
app whose pace the test sets: the body clock stops while the server is not reading or has not
asked for the body, and a refusal never lands in the middle of, or after, another answer.

The attacks themselves, against `postal serve`, are in tests/e2e/test_http_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from postal.cli.serve_limits import HttpLimits, Refusals
from postal.cli.serve_protocol import BoundedHttpToolsProtocol, Bounds
from postal.embedded import free_loopback_port
from tests.integration.helpers import eventually

WINDOW = 0.2  # s: the header timeout and the body window
LIMITS = HttpLimits(
    max_header_bytes=65_536,
    max_headers=100,
    header_timeout=WINDOW,
    body_timeout=WINDOW,
    body_min_rate=1024,
    keep_alive_timeout=30.0,
    max_connections=100,
)
CEILING = 10.0  # s: the longest any wait may take before the test fails


class ShortLimits(BoundedHttpToolsProtocol):
    """The protocol with `LIMITS` rather than the environment's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = Bounds(LIMITS, Refusals.for_limits(LIMITS))
        self.timeout_keep_alive = LIMITS.keep_alive_timeout  # type: ignore[assignment]


class PacedApp:
    """Answers 200 with the length of the body it read, once `go` is set; `/early` answers at
    once without reading the body."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.started = 0  # requests the app has begun

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        length = 0
        if scope["path"] != "/early":
            await self.go.wait()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                length += len(message.get("body", b""))
                more = message.get("more_body", False)
        body = str(length).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(app: PacedApp) -> AsyncIterator[int]:
    port = free_loopback_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=ShortLimits, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=CEILING)
        yield port
    finally:
        app.go.set()
        server.should_exit = True
        await task


async def still_open(reader: asyncio.StreamReader, windows: int = 4) -> bool:
    """Whether the server neither answered nor closed during `windows` body windows."""
    try:
        await asyncio.wait_for(reader.read(1), WINDOW * windows)
    except TimeoutError:
        return True
    return False


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(CEILING):
        return await reader.read()  # to EOF


def post(path: str, length: int, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_the_body_clock_waits_until_the_server_asks_for_the_body() -> None:
    """`Expect: 100-continue`: the client sends nothing until the app reads; however many
    windows that takes, it is not the client's doing."""
    app = PacedApp()
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/", 10, "Expect: 100-continue"))
        assert await still_open(reader)
        app.go.set()
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"0123456789")
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(2) == b"10"
        writer.close()


async def test_the_body_clock_waits_while_the_server_is_not_reading() -> None:
    """A body sent fast to an app that does not read it yet: uvicorn stops reading past 64 KiB,
    so no byte arrives for windows on end, and that is the server's doing, not the client's."""
    app = PacedApp()
    body = b"b" * (1024 * 1024)
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/", len(body)) + body)
        assert await still_open(reader)
        app.go.set()
        await writer.drain()
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(len(str(len(body)))) == str(len(body)).encode()
        writer.close()


async def test_a_body_stalled_after_its_answer_is_cut_without_another_answer() -> None:
    app = PacedApp()
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/early", 100_000) + b"b" * 10)
        received = await read_until_closed(reader)
        writer.close()
    assert received.count(b"HTTP/1.1 ") == 1
    assert received.startswith(b"HTTP/1.1 200 ")


async def test_a_head_stalled_behind_an_unanswered_request_waits_for_that_answer() -> None:
    """Request 1 is still being answered when request 2's head, pipelined behind it, times out:
    request 1 gets its whole answer, then the connection closes, with no 408 after it."""
    app = PacedApp()
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/", 0) + b"GET / HTTP/1.1\r\nHost: x\r\n")
        await eventually(lambda: app.started == 1, timeout=CEILING)
        assert await still_open(reader)  # the head timed out: nothing said yet
        app.go.set()
        received = await read_until_closed(reader)
        writer.close()
    assert received.count(b"HTTP/1.1 ") == 1
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n\r\n0")
    assert app.started == 1  # request 2 never reached the app


async def test_a_slow_head_behind_an_answered_request_gets_its_408() -> None:
    app = PacedApp()
    app.go.set()
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/", 0) + b"GET / HTTP/1.1\r\nHost: x\r\n")
        received = await read_until_closed(reader)
        writer.close()
    first, _, second = received.partition(b"\r\n\r\n0")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"header_timeout"' in second


async def test_a_huge_head_behind_a_request_in_the_same_read_is_still_cut() -> None:
    """The parser does not say where a request ends within a read, so the whole read counts
    against the head that begins after it: refused, after the answer to the request before it
    (with a 431 if that answer was out before the head ran out of room, else without)."""
    app = PacedApp()
    app.go.set()
    async with serving(app) as port:
        blob = post("/", 0) + b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 300_000
        received = await asyncio.to_thread(send_and_read, port, blob)
    first, _, second = received.partition(b"\r\n\r\n0")
    assert first.startswith(b"HTTP/1.1 200 ")
    if second:
        assert second.startswith(b"HTTP/1.1 431 ")
        assert b'"code":"header_too_large"' in second
    assert app.started == 1


def send_and_read(port: int, blob: bytes) -> bytes:
    """Send `blob` (as far as the server reads it), then read until the server closes. A plain
    socket: the kernel hands over what arrived before the reset that the unread bytes cause,
    where asyncio's streams raise at once."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=CEILING) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(blob)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received
