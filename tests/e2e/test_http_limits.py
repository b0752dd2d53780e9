"""The HTTP limits of `postal serve` (`cli/serve_protocol.py`), each against the attack it stops.

Every test talks to a real `postal serve` process on a free loopback port, over raw sockets (an
HTTP client would not send what an attacker sends), with short limits so that they take seconds.
What is asserted is the answer (431 or 408 with the JSON error, 503 past the connection cap),
that the server closed the connection, and the bound: the server's resident memory, the number
of connections it holds. No assertion is on time: each wait only has a ceiling, so that a
regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis as sync_redis

from tests.e2e.test_serve import Served, serving

TOKEN = "http-limits-test-token-" + "x" * 24
SHORT = "1s"  # the header, body and keep-alive timeouts of the test servers
CEILING = 20.0  # s: the longest any wait here may take before the test fails
MiB = 1024 * 1024


@dataclass
class Server:
    served: Served
    host: str
    port: int

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.served.process.pid)  # one worker: uvicorn serves in-process

    def connections_held(self) -> int:
        """Established TCP connections the server holds on its port."""
        return sum(
            1
            for conn in self.process.net_connections(kind="tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == self.port
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("limits"), redis_url)


def serve(directory: Path, redis_url: str, **limits: str) -> Iterator[Server]:
    """`postal serve` with short limits (and `limits`); its keys are deleted once it stops."""
    prefix = f"postal-test:{uuid.uuid4().hex[:12]}:"
    environment = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/postal.db",
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "POSTAL_API_TOKEN": TOKEN,
        "POSTAL_LOG_LEVEL": "WARNING",
        "POSTAL_HTTP_HEADER_TIMEOUT": SHORT,
        "POSTAL_HTTP_BODY_TIMEOUT": SHORT,
        "POSTAL_HTTP_KEEP_ALIVE_TIMEOUT": SHORT,
        **limits,
    }
    try:
        with serving(directory, **environment) as served:
            port = int(served.base.rsplit(":", 1)[1])
            yield Server(served, "127.0.0.1", port)
    finally:
        client = sync_redis.Redis.from_url(redis_url)
        with client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=CEILING)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sends until it closes: (bytes, "eof" or "reset"). Closes `sock`."""
    received = b""
    deadline = time.monotonic() + CEILING
    with sock:
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            if not chunk:
                return received, "eof"
            received += chunk
    raise AssertionError(f"the server did not close the connection; it sent {received[:200]!r}")


def parse(answer: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON body of one HTTP/1.1 response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert len(body) == int(headers["content-length"])
    return status, headers, json.loads(body)


def assert_refused(answer: bytes, status: int, code: str) -> None:
    got_status, headers, body = parse(answer)
    assert (got_status, body["error"]["code"]) == (status, code), body  # type: ignore[index]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"


# -- the head -------------------------------------------------------------------------------------


def test_a_head_past_64_kib_gets_431_and_the_connection_is_closed(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (65 * 1024))
    answer, _ = read_until_closed(sock)
    assert_refused(answer, 431, "header_too_large")
    # Just under the cap, the same request is served.
    small = b"a" * (60 * 1024)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + small + b"\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_unfinished_huge_heads_do_not_grow_the_server(server: Server) -> None:
    """The issue's attack: six connections each sending an unfinished 64 MiB header took the
    server from 291 MB to 675 MB. Here six send 16 MiB each, all held open at once, three of
    them behind a whole request in the same write (so the huge head begins in the read that
    ends that request); unbounded, the server would hold 96 MiB more."""
    before = server.process.memory_info().rss
    huge = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (16 * MiB)
    whole = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    blobs = [memoryview(huge)] * 3 + [memoryview(whole + huge)] * 3
    attackers = [connect(server) for _ in blobs]  # read_until_closed closes each
    cut_short = 0
    for sock, blob in zip(attackers, blobs, strict=True):
        try:
            sock.sendall(blob)
        except (BrokenPipeError, ConnectionResetError):
            cut_short += 1  # the server closed it: nothing more was read
    grown = server.process.memory_info().rss - before
    outcomes = [read_until_closed(sock) for sock in attackers]
    assert cut_short == 6
    assert grown < 16 * MiB, f"the server grew by {grown / MiB:.1f} MiB"
    for (answer, _), blob in zip(outcomes, blobs, strict=True):
        if blob[: len(whole)] == whole and answer:
            assert answer.startswith(b"HTTP/1.1 200 ")  # the whole request was answered
            answer = answer[answer.index(b"}") + 1 :]  # {"status":"ok"}
        if answer:  # else the reset of the unread bytes overtook the answer
            assert_refused(answer, 431, "header_too_large")
    assert httpx.get(f"{server.served.base}/healthz").status_code == 200


def test_more_than_100_headers_get_431(server: Server) -> None:
    sock = connect(server)
    fields = b"".join(b"X-%d: a\r\n" % i for i in range(101))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    answer, _ = read_until_closed(sock)
    assert_refused(answer, 431, "too_many_headers")


async def trickle(server: Server, start: bytes, pause: float) -> tuple[bytes, str, int]:
    """Send `start`, then one byte every `pause` seconds until the server closes the connection:
    (what it answered, how it closed, bytes trickled)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(start)
    sent = 0
    answer = b""
    deadline = time.monotonic() + CEILING
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), pause)
            except TimeoutError:
                writer.write(b"a")
                sent += 1
                continue
            if not chunk:
                return answer, "eof", sent
            answer += chunk
        raise AssertionError(f"still open after {CEILING:g}s, {sent} bytes trickled")
    except ConnectionResetError:
        return answer, "reset", sent
    finally:
        writer.close()


def test_slow_heads_are_cut_at_the_header_timeout(server: Server) -> None:
    """The issue's attack: 300 connections sending a byte every 5 s were all still open 40 s
    later. Here a byte every 0.25 s against a 1 s header timeout: each gets 408 and is closed."""

    async def attack() -> list[tuple[bytes, str, int]]:
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        return await asyncio.gather(*(trickle(server, start, 0.25) for _ in range(300)))

    outcomes = asyncio.run(attack())
    assert len(outcomes) == 300
    for answer, _, _ in outcomes:
        assert_refused(answer, 408, "header_timeout")
    assert server.connections_held() == 0


def test_an_idle_connection_is_closed_without_a_word(server: Server) -> None:
    new = connect(server)  # never sends a byte
    assert read_until_closed(new) == (b"", "eof")
    used = connect(server)
    used.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer, closed = read_until_closed(used)  # the answer, then idle until the keep-alive ends
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert closed == "eof"
    assert b"connection: close" not in answer.lower()  # it was kept alive, then timed out


# -- the body -------------------------------------------------------------------------------------


def test_a_body_slower_than_the_minimum_rate_gets_408(server: Server) -> None:
    """A body trickled a byte every 0.25 s brings 4 bytes a window of 1 s, under the 1,024 a
    second: 408 and closed, the post not created."""
    title = f"slow-{uuid.uuid4().hex}"
    body = json.dumps({"title": title, "body": "b" * 1000, "author": "a"}).encode()
    head = (
        b"POST /api/v1/posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    answer, _, trickled = asyncio.run(trickle(server, head + body[:10], 0.25))
    assert_refused(answer, 408, "body_too_slow")
    assert trickled < len(body) - 10  # cut before the body was complete
    listed = httpx.get(f"{server.served.base}/api/v1/posts", params={"limit": 100}).json()
    assert title not in json.dumps(listed)


def test_a_body_at_the_minimum_rate_is_served(server: Server) -> None:
    """Each window's bytes are what counts: 2 KiB a second, sent in bursts, is served."""
    body = json.dumps({"title": "steady", "body": "b" * 5000, "author": "a"}).encode()
    head = (
        b"POST /api/v1/posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head)
        for offset in range(0, len(body), 1024):
            time.sleep(0.5)
            sock.sendall(body[offset : offset + 1024])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]


# -- connections ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    """A server holding at most 10 connections, which stay until the client goes."""
    yield from serve(
        tmp_path_factory.mktemp("capped"),
        redis_url,
        POSTAL_HTTP_MAX_CONNECTIONS="10",
        POSTAL_HTTP_KEEP_ALIVE_TIMEOUT="5m",
    )


def test_connections_past_the_cap_get_503_and_are_closed(capped: Server) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(connect(capped)) for _ in range(10)]
        for sock in held:  # each is served: they are in
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        refused = [read_until_closed(connect(capped)) for _ in range(20)]
        for answer, _ in refused:
            assert_refused(answer, 503, "too_many_connections")
            assert parse(answer)[1]["retry-after"] == "1"
        assert capped.connections_held() == 10
        held[0].close()
        deadline = time.monotonic() + CEILING
        while capped.connections_held() > 9:
            assert time.monotonic() < deadline, "the server did not see the close"
            time.sleep(0.05)
        assert httpx.get(f"{capped.served.base}/healthz").status_code == 200  # a slot is free
