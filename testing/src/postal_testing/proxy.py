"""A small fault-injecting TCP proxy for tests and benchmarks, on the loopback interface only.

    async with FaultProxy(upstream_port) as proxy:
        client = CacheClient.create(read_url=proxy.url, ...)
        await proxy.black_hole()      # from now on nothing gets through, either way
        await proxy.pass_through()    # and now everything does again

It listens on 127.0.0.1:<free port> and forwards each accepted connection to 127.0.0.1:<upstream
port>; it refuses to forward anywhere that is not a loopback address. A mode applies at once to the
connections already open and to every new one:

- `pass_through()`: forward bytes both ways as they come;
- `add_latency(seconds)`: deliver each chunk `seconds` after it was read, in each direction (so a
  request/reply round trip takes twice that), keeping the order of the bytes; chunks are delayed
  independently, so pipelined traffic does not pile delays up;
- `black_hole()`: accept connections and read everything, but forward nothing and answer nothing;
- `reset()`: reset every open connection (SO_LINGER 0, so the peer sees an RST, not a FIN) and reset
  each new one as soon as it is accepted;
- `refuse()`: stop listening, so connects get ECONNREFUSED, and close the open connections, as a
  Redis that went away would; any other mode listens again on the same port (which another
  process could take in between: in practice, on loopback and for a second or two, none does).

The mode methods are coroutines: `reset()` and `refuse()` return once the connections they end are
closed, and leaving `refuse()` re-opens the listening socket. On exit every connection is reset and
every task the proxy started has ended, so nothing leaks into the next test (pytest turns
ResourceWarnings into errors here).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import struct
from typing import Self

LOOPBACK = "127.0.0.1"
UPSTREAM_CONNECT_TIMEOUT = 2.0  # seconds
CHUNK = 64 * 1024
CLOSE_TIMEOUT = 1.0  # seconds a graceful close may take before the transport is aborted


class Mode(enum.Enum):
    PASS = "pass"
    LATENCY = "latency"
    BLACK_HOLE = "black hole"
    RESET = "reset"
    REFUSE = "refuse"


def _require_loopback(host: str) -> str:
    if host == "localhost":
        return LOOPBACK
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"FaultProxy forwards to loopback addresses only, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"FaultProxy forwards to loopback addresses only, not {host!r}")
    return str(address)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close at once, with an RST rather than a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # uvloop's socket wrapper raises ValueError once its descriptor is gone.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter | None) -> None:
    """Close gracefully (FIN), aborting if that does not finish promptly."""
    if writer is None:
        return
    if not writer.transport.is_closing():
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


_EOF = None  # queued after the last chunk of a direction


class _Link:
    """One proxied connection: the accepted client side and its upstream side."""

    def __init__(
        self,
        proxy: FaultProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self._proxy = proxy
        self._client_reader = client_reader
        self._client_writer = client_writer
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._finished = asyncio.Event()
        self._reset = False

    async def run(self) -> None:
        """Forward until either side closes, a fault ends the link, or the proxy stops."""
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                upstream_reader, upstream_writer = await self._proxy._open_upstream()
            except OSError:
                if self._proxy.mode is not Mode.BLACK_HOLE:
                    return  # upstream down: the client sees its connection closed
                # A black hole needs no upstream: swallow what the client sends.
                tasks.append(asyncio.create_task(self._swallow()))
            else:
                self._upstream_writer = upstream_writer
                for reader, writer in (
                    (self._client_reader, upstream_writer),
                    (upstream_reader, self._client_writer),
                ):
                    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
                    tasks.append(asyncio.create_task(self._read(reader, queue)))
                    tasks.append(asyncio.create_task(self._write(queue, writer)))
            await self._finished.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._reset:
                _abort_with_rst(self._client_writer)
                if self._upstream_writer is not None:
                    self._upstream_writer.transport.abort()
            await _close(self._client_writer)
            await _close(self._upstream_writer)

    def finish(self, *, reset: bool = False) -> None:
        self._reset = self._reset or reset
        if reset:
            # Abort now, not when `run` gets scheduled, so no byte slips through in between.
            _abort_with_rst(self._client_writer)
        self._finished.set()

    async def _swallow(self) -> None:
        try:
            while await self._client_reader.read(CHUNK):
                pass
        except OSError:
            pass
        self._finished.set()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(CHUNK):
                mode, latency = self._proxy.mode, self._proxy.latency
                if mode is Mode.BLACK_HOLE:
                    continue
                delay = latency if mode is Mode.LATENCY else 0.0
                queue.put_nowait((loop.time() + delay, data))
        except OSError:
            self._finished.set()
            return
        queue.put_nowait(_EOF)

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await queue.get()) is not _EOF:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._proxy.mode is Mode.BLACK_HOLE:
                    continue  # read while passing, due once black-holed: dropped
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        self._finished.set()  # one side closed (after its last delayed chunk) or broke


class FaultProxy:
    """A TCP proxy from 127.0.0.1:`port` to a loopback upstream, with switchable faults."""

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK) -> None:
        self.upstream_host = _require_loopback(upstream_host)
        self.upstream_port = upstream_port
        self.host = LOOPBACK
        self.port = 0  # chosen by the OS on the first listen, then kept
        self.mode = Mode.PASS
        self.latency = 0.0
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._links: dict[_Link, asyncio.Task[None]] = {}  # each link and the task running it
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.upstream_host}:{self.upstream_port}"
            f" {self.mode.value} links={len(self._links)}>"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._listen()  # even when refusing: this picks the port
        if self.mode is Mode.REFUSE:
            self._stop_listening()

    async def aclose(self) -> None:
        server = self._stop_listening()
        await self._end_links(reset=True)
        if server is not None:
            await server.wait_closed()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- modes -----------------------------------------------------------------------------

    async def pass_through(self) -> None:
        await self._set_mode(Mode.PASS)

    async def add_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self.latency = seconds
        await self._set_mode(Mode.LATENCY)

    async def black_hole(self) -> None:
        await self._set_mode(Mode.BLACK_HOLE)

    async def reset(self) -> None:
        await self._set_mode(Mode.RESET)
        await self._end_links(reset=True)

    async def refuse(self) -> None:
        await self._set_mode(Mode.REFUSE)
        self._stop_listening()
        await self._end_links(reset=False)

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is not Mode.LATENCY:
            self.latency = 0.0
        if mode is not Mode.REFUSE and self._started and self._server is None:
            await self._listen()

    # -- plumbing --------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._on_accept, self.host, self.port, reuse_address=True
        )
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])

    def _stop_listening(self) -> asyncio.Server | None:
        """Close the listening socket now (connects are refused from here on)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        return server

    async def _end_links(self, *, reset: bool) -> None:
        """End every open link and return once their sockets are closed."""
        links = dict(self._links)
        for link in links:
            link.finish(reset=reset)
        if not links:
            return
        # Each link closes its sockets on its way out; cancel only one that is stuck.
        _, stuck = await asyncio.wait(links.values(), timeout=UPSTREAM_CONNECT_TIMEOUT + 1)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT):
            try:
                return await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except TimeoutError:
                raise OSError("upstream connect timed out") from None

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.mode is Mode.RESET or self._server is None:
            _abort_with_rst(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        link = _Link(self, reader, writer)
        self._links[link] = task
        try:
            await link.run()
        except asyncio.CancelledError:
            pass  # the proxy is stopping; `run` has closed both sides
        finally:
            del self._links[link]
