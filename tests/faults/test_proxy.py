"""The fault-injecting proxy itself, against the shared Redis (raw RESP over asyncio streams)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from postal_testing.proxy import FaultProxy

TEST_TIMEOUT = 10.0  # seconds: a hang fails the test instead of blocking the run
PONG = b"+PONG\r\n"


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    async with asyncio.timeout(TEST_TIMEOUT), FaultProxy(_port_of(redis_url)) as proxy:
        yield proxy


class _Peer:
    """One raw client connection through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, proxy: FaultProxy) -> _Peer:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        return cls(reader, writer)

    async def ping(self, timeout: float = 2.0) -> float:
        """Seconds for one PING round trip; fails on a wrong answer."""
        started = time.perf_counter()
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        async with asyncio.timeout(timeout):
            assert await self.reader.readexactly(len(PONG)) == PONG
        return time.perf_counter() - started

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def peers() -> AsyncIterator[list[_Peer]]:
    """Peers appended here are closed after the test, whatever happened to them."""
    opened: list[_Peer] = []
    yield opened
    for peer in opened:
        await peer.close()


async def _open(proxy: FaultProxy, peers: list[_Peer]) -> _Peer:
    peer = await _Peer.open(proxy)
    peers.append(peer)
    return peer


def test_refuses_non_loopback_upstreams() -> None:
    for host in ("10.0.0.1", "192.168.1.1", "8.8.8.8", "::ffff:10.0.0.1", "redis.example.com"):
        with pytest.raises(ValueError, match="loopback"):
            FaultProxy(6379, upstream_host=host)
    assert FaultProxy(6379, upstream_host="127.0.0.2").upstream_host == "127.0.0.2"
    assert FaultProxy(6379, upstream_host="localhost").upstream_host == "127.0.0.1"


async def test_passes_traffic_through(proxy: FaultProxy, peers: list[_Peer]) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    peer = await _open(proxy, peers)
    await peer.ping()
    # A real client, pipelining several commands, gets every reply in order.
    client = redis.Redis.from_url(proxy.url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for word in ("a", "b", "c"):
                pipe.echo(word)
            assert await pipe.execute() == [b"a", b"b", b"c"]
    finally:
        await client.aclose()
    assert proxy.connections_accepted == 2


async def test_latency_delays_each_direction_and_keeps_order(
    proxy: FaultProxy, peers: list[_Peer]
) -> None:
    peer = await _open(proxy, peers)
    assert await peer.ping() < 0.5
    await proxy.add_latency(0.2)
    # Loose bounds: 0.2 s each way is 0.4 s a round trip; CI jitter only adds.
    assert await peer.ping() >= 0.35
    # Chunks sent 0.1 s apart arrive in order, each about one round trip after it was sent:
    # the delays do not pile up.
    started = time.perf_counter()
    peer.writer.write(b"ECHO first\r\n")
    await asyncio.sleep(0.1)
    peer.writer.write(b"ECHO second\r\n")
    async with asyncio.timeout(3):
        assert await peer.reader.readexactly(11) == b"$5\r\nfirst\r\n"
        assert await peer.reader.readexactly(12) == b"$6\r\nsecond\r\n"
    assert 0.45 <= time.perf_counter() - started < 1.5
    # A new connection is slowed down too, and pass-through ends the delay.
    late = await _open(proxy, peers)
    assert await late.ping() >= 0.35
    await proxy.pass_through()
    assert await late.ping() < 0.3


async def test_black_hole_answers_nothing(proxy: FaultProxy, peers: list[_Peer]) -> None:
    existing = await _open(proxy, peers)
    await existing.ping()
    await proxy.black_hole()
    newcomer = await _open(proxy, peers)  # still accepted...
    for peer in (existing, newcomer):
        with pytest.raises(TimeoutError):
            await peer.ping(timeout=0.3)  # ...but never answered
    assert proxy.connections_accepted == 2
    await proxy.pass_through()
    await (await _open(proxy, peers)).ping()


async def test_refuse_stops_listening_until_another_mode(
    proxy: FaultProxy, peers: list[_Peer]
) -> None:
    existing = await _open(proxy, peers)
    await existing.ping()
    port = proxy.port
    await proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, port)
    # Open connections are closed, as by a server that went away.
    async with asyncio.timeout(2):
        assert await existing.reader.read() == b""
    await proxy.pass_through()
    assert proxy.port == port
    await (await _open(proxy, peers)).ping()


async def test_reset_resets_open_and_new_connections(proxy: FaultProxy, peers: list[_Peer]) -> None:
    existing = await _open(proxy, peers)
    await existing.ping()
    await proxy.reset()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await existing.ping()
    newcomer = await _open(proxy, peers)  # the handshake completes, then the RST comes
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await newcomer.ping()
    await proxy.pass_through()
    await (await _open(proxy, peers)).ping()


async def test_exit_closes_everything(redis_url: str, peers: list[_Peer]) -> None:
    async with FaultProxy(_port_of(redis_url)) as proxy:
        port = proxy.port
        slow = await _open(proxy, peers)
        await proxy.add_latency(5.0)
        slow.writer.write(b"PING\r\n")  # in flight inside the proxy when it stops
        await asyncio.sleep(0.05)
    assert proxy.open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(2):
            await slow.reader.readexactly(1)
