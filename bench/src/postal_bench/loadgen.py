"""An HTTP/1.1 load generator on asyncio streams: a closed loop for throughput, an open loop for
latency. Loopback only, bounded in time.

Why not httpx: its per-request overhead would make the client, not the server, the bottleneck.
Here a connection writes one fixed request and reads the reply with two awaits (the head up to
the blank line, then Content-Length bytes); nothing is parsed but the status and the length.

- Closed loop (`closed_loop`): C connections, each sending its next request as soon as the
  previous reply is in. Its rate is the server's throughput at that concurrency; its latency is
  mostly queueing behind our own requests, so it is kept but not the headline.
- Open loop (`open_loop`): requests are scheduled at a fixed rate whatever the replies do. Each
  is sent at its scheduled time on a free connection (one more is opened when none is free, up to
  a cap) and its latency counts from its scheduled time. A server that stalls for 100 ms then
  shows about 100 ms on every request scheduled during the stall, not only on the one that was
  stuck: no coordinated omission (wrk2's approach).

Every run stops by itself: replies still missing `REPLY_GRACE` after the end are cancelled and
counted as errors. A timed request that fails is counted as an error with its latency kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from postal_bench.errors import BenchError
from postal_bench.load import TICK
from postal_bench.loopback import require_loopback

REPLY_GRACE = 5.0  # s: how long replies are awaited after a run's end; later ones are errors
CONNECT_TIMEOUT = 2.0  # s: a connection not established by then is an error
ERROR_PAUSE = 0.01  # s: a closed-loop connection that failed waits this long before redialling
HEAD_LIMIT = 64 * 1024  # bytes: the longest response head accepted
MAX_OPEN_LOOP_CONNECTIONS = 256  # the open loop's cap; more requests than this wait their turn
OPEN_LOOP_PREOPENED = 4  # connections dialled before an open loop's schedule starts
SEND_LEAD = 0.001  # s: the open loop sends up to this early, as timers fire up to ~1 ms late

Tick = Callable[[float], None]  # called with the elapsed seconds, every TICK

# What a failed request raises: refused, reset, closed early (EOFError), a head too long, a reply
# that is not HTTP/1.1, a bad number in it, a connect that timed out.
_FAILURES = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError)


class ResponseError(ValueError):
    """The server's reply is not an HTTP/1.1 response this client can read."""


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where requests go: a loopback host, a port and a path (with its query)."""

    host: str
    port: int
    path: str = "/"

    @classmethod
    def from_url(cls, url: str) -> HttpTarget:
        """The target in an `http://` URL; NotLoopback unless its host is this machine."""
        require_loopback(url, schemes=("http",))
        parts = urlsplit(url)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        assert parts.hostname is not None  # require_loopback checked it
        return cls(parts.hostname, parts.port or 80, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}{self.path}"

    def request(
        self, method: str = "GET", body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """The request's bytes, ready to be written as many times as needed."""
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    head: bytes  # status line and headers, lower-cased, ending with the blank line
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        marker = f"\r\n{name.lower()}:".encode("latin-1")
        start = self.head.find(marker)
        if start < 0:
            return None
        end = self.head.find(b"\r\n", start + len(marker))
        return self.head[start + len(marker) : end].strip().decode("latin-1")


class Connection:
    """One keep-alive connection to a target."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.reusable = True  # False once the server said `Connection: close` or I/O failed

    @classmethod
    async def open(cls, target: HttpTarget) -> Connection:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, limit=HEAD_LIMIT
            )
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> Reply:
        """Send `request`, read one reply. On any failure the connection is no longer reusable."""
        self.reusable = False
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            raise ResponseError(f"not an HTTP/1.1 response: {head[:40]!r}")
        head = head.lower()
        status = int(head[9:12])
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            raise ResponseError("a response without Content-Length (chunked is not supported)")
        length = int(head[start + 17 : head.index(b"\r\n", start + 17)])
        body = await self._reader.readexactly(length) if length else b""
        self.reusable = b"\r\nconnection: close" not in head
        return Reply(status, head, body)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # never CancelledError: a cancelled worker must end
            await self._writer.wait_closed()


async def fetch(
    url: str, method: str = "GET", body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    """One request on a connection of its own, for setting targets up (not for load)."""
    target = HttpTarget.from_url(url)
    connection = await Connection.open(target)
    try:
        async with asyncio.timeout(REPLY_GRACE):
            return await connection.exchange(target.request(method, body, headers))
    finally:
        await connection.aclose()


@dataclass(slots=True)
class LoadResult:
    """One run of a loop: the measured requests' latencies (failed ones included), the errors.

    `elapsed` is the measured span in seconds; `sent` the requests sent in it.
    """

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0
    sent: int = 0
    connections: int = 0  # the most connections open at once
    late_sends: int = 0  # open loop: requests sent more than 1 ms after their scheduled time

    def fail(self, latency: float, error: str) -> None:
        self.latencies.append(latency)
        self._error(error)

    def count_status(self, status: int) -> None:
        """A reply came (its latency is recorded by the caller): outside 2xx, it is an error."""
        if not 200 <= status < 300:
            self._error(f"HTTP {status}")

    def _error(self, error: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or error

    @property
    def completed(self) -> int:
        return len(self.latencies) - self.errors


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _wait_ticking(
    tasks: Sequence[asyncio.Task[None]], until: float, started: float, tick: Tick
) -> int:
    """Wait for `tasks` until perf_counter() reaches `until`; cancel the rest; how many were."""
    pending = set(tasks)
    try:
        while pending and (left := until - time.perf_counter()) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(TICK, left))
            tick(time.perf_counter() - started)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error  # a bug in a worker, not a failed request: those are counted
    return len(pending)


async def closed_loop(
    target: HttpTarget,
    *,
    connections: int,
    seconds: float,
    warmup: float = 0.0,
    tick: Tick = lambda elapsed: None,
    on_measure: Callable[[], None] | None = None,
) -> LoadResult:
    """`connections` connections send requests back to back for `warmup` + `seconds`.

    As in `bench.run_load`: requests started before the end and answered after the warm-up count,
    each timed from its send; the rate is over the span from the end of the warm-up to the last
    reply. `on_measure` is called as the warm-up ends (e.g. to read the server's CPU then).
    """
    if connections < 1 or seconds <= 0 or warmup < 0:
        raise BenchError("a closed loop needs connections >= 1, seconds > 0, warm-up >= 0")
    result = LoadResult()
    request = target.request()
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    last_reply = measure_from

    async def worker() -> None:
        nonlocal last_reply
        perf = time.perf_counter
        latencies = result.latencies
        connection: Connection | None = None
        try:
            while (began := perf()) < stop_at:
                try:
                    if connection is None:
                        connection = await Connection.open(target)
                        began = perf()
                    reply = await connection.exchange(request)
                except _FAILURES as exc:
                    ended = perf()
                    if ended >= measure_from:
                        result.fail(ended - began, _describe(exc))
                    if connection is not None:
                        await connection.aclose()
                        connection = None
                    await asyncio.sleep(ERROR_PAUSE)
                    continue
                ended = perf()
                if ended >= measure_from:
                    latencies.append(ended - began)
                    last_reply = ended
                    result.count_status(reply.status)
                if not connection.reusable:
                    await connection.aclose()
                    connection = None
        finally:
            if connection is not None:
                await connection.aclose()

    marker = None
    if on_measure is not None:
        delay = max(0.0, measure_from - time.perf_counter())
        marker = asyncio.get_running_loop().call_later(delay, on_measure)
    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    try:
        unanswered = await _wait_ticking(workers, stop_at + REPLY_GRACE, started, tick)
    finally:
        if marker is not None:
            marker.cancel()  # a no-op once it has run
    if unanswered:
        result.errors += unanswered
        result.first_error = result.first_error or f"no reply within {REPLY_GRACE:g}s of the end"
    result.elapsed = max(last_reply - measure_from, 1e-9)
    result.sent = len(result.latencies) + unanswered
    result.connections = connections
    return result


async def open_loop(
    target: HttpTarget,
    *,
    rate: float,
    seconds: float,
    warmup: float = 0.0,
    max_connections: int = MAX_OPEN_LOOP_CONNECTIONS,
    tick: Tick = lambda elapsed: None,
) -> LoadResult:
    """Requests scheduled `rate` per second for `warmup` + `seconds`; those scheduled after the
    warm-up are measured, each from its scheduled time (or its send, if that was earlier).

    A request is handed to an idle connection; when none is idle one more is opened, up to
    `max_connections`; beyond that requests queue, and their wait counts as latency.
    """
    if rate <= 0 or seconds <= 0 or warmup < 0 or max_connections < 1:
        raise BenchError("an open loop needs rate > 0, seconds > 0, warm-up >= 0, a connection")
    result = LoadResult()
    request = target.request()
    queue: asyncio.Queue[float] = asyncio.Queue()
    idle = 0  # workers waiting on the queue
    workers: list[asyncio.Task[None]] = []
    total = round((warmup + seconds) * rate)
    measured_from_index = round(warmup * rate)
    started = time.perf_counter() + 0.01  # the first request's scheduled time
    measure_from = started + measured_from_index / rate

    async def worker() -> None:
        nonlocal idle
        perf = time.perf_counter
        connection: Connection | None = None
        try:
            while True:
                idle += 1
                try:
                    scheduled = await queue.get()
                finally:
                    idle -= 1
                measured = scheduled >= measure_from
                sent = perf()
                origin = min(scheduled, sent)
                if measured and sent - scheduled > SEND_LEAD:
                    result.late_sends += 1
                try:
                    if connection is None:
                        connection = await Connection.open(target)
                    reply = await connection.exchange(request)
                except _FAILURES as exc:
                    if measured:
                        result.fail(perf() - origin, _describe(exc))
                    if connection is not None:
                        await connection.aclose()
                        connection = None
                    continue
                finally:
                    queue.task_done()
                if measured:
                    result.latencies.append(perf() - origin)
                    result.count_status(reply.status)
                if not connection.reusable:
                    await connection.aclose()
                    connection = None
        finally:
            if connection is not None:
                await connection.aclose()

    def add_worker() -> None:
        workers.append(asyncio.create_task(worker()))
        result.connections = max(result.connections, len(workers))

    async def dispatch() -> None:
        for _ in range(min(OPEN_LOOP_PREOPENED, max_connections)):
            add_worker()
        index = 0
        while index < total:
            now = time.perf_counter()
            while index < total and started + index / rate <= now + SEND_LEAD:
                queue.put_nowait(started + index / rate)
                index += 1
                if queue.qsize() > idle and len(workers) < max_connections:
                    add_worker()
            if index < total:
                await asyncio.sleep(max(0.0, started + index / rate - SEND_LEAD - now))
        await queue.join()

    dispatcher = asyncio.create_task(dispatch())
    stop_at = started + total / rate
    try:
        unanswered = await _wait_ticking([dispatcher], stop_at + REPLY_GRACE, started - 0.01, tick)
    finally:
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers)
    measured = total - measured_from_index
    missing = measured - len(result.latencies)
    if unanswered and missing > 0:
        result.errors += missing
        result.first_error = result.first_error or f"no reply within {REPLY_GRACE:g}s of the end"
    result.elapsed = seconds
    result.sent = measured
    return result
