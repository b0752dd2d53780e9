"""The load a fault runs under: many readers and one writer over Postal's HTTP API, every reply
checked, and a scraper keeping Postal's /metrics every `SCRAPE_INTERVAL`.

- Readers: N keep-alive connections, each looping `GET /api/v1/posts/{id}` over the hot set
  from its own offset. A read is timed from just before its request is written (connecting
  included) and classified: OK (200, JSON, the id asked for: its version is kept), WRONG (a 200
  with a body for another post, or one that does not parse), UNAVAILABLE (a clear 503: a JSON
  error body and Retry-After), FAILED (any other status, or the connection failed) or HUNG (no
  reply within `hang_bound` seconds: given up on, never waited for longer).
- The writer: one loop PUTting a new revision of a random hot post, pausing 10-20 ms between
  writes; each accepted write is kept as (post, version from the reply, when the reply was in),
  and is chased at once by a read of the same post on a connection of its own, checked like
  any other read: the read most likely to catch an invalidation that has not landed (on a
  replica, say) when the write returns. The readers alone, spread over the hot set, rarely
  read a post within milliseconds of its write. The writer may write through another Postal
  process than the one the readers (and its chase reads) read from: then what is tested is
  that one process learns in time of another's writes (the near cache's faults).
- Stale reads are found afterwards (`stale_reads`): a read is stale when the version it got
  is below the highest version of that post whose PUT had returned to the writer before the
  read was sent. Readers and writer share one event loop and one clock. The comparison is
  conservative: the writer's timestamp is taken when its task resumes after the reply (a
  little after the reply was in), the reader's before it connects; so a read counted stale
  is surely stale, and one sent in that small gap is not judged. A stale read's age is the
  time from the return of the first write that replaced the version it got to its own send,
  by the same conservative clocks: a read older than a bound by this measure surely is.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from postal.stats.scrape import Scrape
from postal_bench.errors import BenchError
from postal_bench.faults.rig import POSTS_PATH, PostalChild, post_document
from postal_bench.loadgen import Connection, Reply

SCRAPE_INTERVAL = 0.1  # s between /metrics scrapes: the resolution of the recovery time
WRITE_PAUSE = (0.010, 0.020)  # s: the writer's pause between writes, drawn uniformly
RECONNECT_PAUSE = 0.01  # s: a reader whose connection failed waits this long before redialling
# What a failed exchange raises: refused, reset, closed early, an unreadable reply.
_FAILURES = (OSError, EOFError, asyncio.LimitOverrunError, ValueError)


class Outcome(enum.IntEnum):
    OK = 0
    WRONG = 1
    UNAVAILABLE = 2
    FAILED = 3
    HUNG = 4


@dataclass(slots=True)
class ReadLog:
    """Every read, column by column (sent: perf_counter seconds; version -1 unless OK)."""

    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    post: list[int] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    outcome: list[Outcome] = field(default_factory=list)
    examples: dict[Outcome, str] = field(default_factory=dict)  # the first of each non-OK kind

    def add(
        self, sent: float, latency: float, post: int, outcome: Outcome, version: int, detail: str
    ) -> None:
        self.sent.append(sent)
        self.latency.append(latency)
        self.post.append(post)
        self.version.append(version)
        self.outcome.append(outcome)
        if outcome is not Outcome.OK and outcome not in self.examples:
            self.examples[outcome] = f"GET {POSTS_PATH}/{post}: {detail}"

    def __len__(self) -> int:
        return len(self.sent)


@dataclass(slots=True)
class WriteLog:
    """Accepted writes per post (when the reply was in, the version it named), and the rest."""

    returned: dict[int, list[float]] = field(default_factory=dict)
    versions: dict[int, list[int]] = field(default_factory=dict)
    failed_sent: list[float] = field(default_factory=list)  # when each failed write was sent
    failed_ended: list[float] = field(default_factory=list)
    first_failure: str | None = None

    @property
    def accepted(self) -> int:
        return sum(len(times) for times in self.returned.values())

    def accept(self, post: int, version: int, returned: float) -> None:
        self.returned.setdefault(post, []).append(returned)
        self.versions.setdefault(post, []).append(version)

    def fail(self, sent: float, ended: float, detail: str) -> None:
        self.failed_sent.append(sent)
        self.failed_ended.append(ended)
        self.first_failure = self.first_failure or detail


@dataclass(frozen=True, slots=True)
class StaleRead:
    post: int
    seen: int  # the version the read got
    expected: int  # the newest version whose write had returned before the read was sent
    sent: float
    acknowledged: float  # when that write returned to the writer
    replaced: float  # when the first write of a version above `seen` returned to the writer

    @property
    def age(self) -> float:
        """Seconds from the return of the write that replaced the version seen to the read's
        send: at least this long after that write, the read was served the version before it."""
        return self.sent - self.replaced


STALE_EXAMPLES = 5  # stale reads described in a row, the first ones


def stale_reads(reads: ReadLog, writes: WriteLog) -> list[StaleRead]:
    """Every OK read that got a version older than an already acknowledged write, in the order
    they were sent."""
    found: list[StaleRead] = []
    for sent, post, version, outcome in zip(
        reads.sent, reads.post, reads.version, reads.outcome, strict=True
    ):
        if outcome is not Outcome.OK:
            continue
        times = writes.returned.get(post)
        if not times:
            continue
        acknowledged = bisect.bisect_left(times, sent)  # writes returned strictly before `sent`
        versions = writes.versions[post]
        if acknowledged and version < (expected := versions[acknowledged - 1]):
            # One writer, one write at a time: a post's versions rise in the order they returned.
            replaced = times[bisect.bisect_right(versions, version)]
            found.append(
                StaleRead(post, version, expected, sent, times[acknowledged - 1], replaced)
            )
    found.sort(key=lambda read: read.sent)
    return found


def count_stale(reads: ReadLog, writes: WriteLog) -> tuple[int, list[StaleRead]]:
    """How many OK reads got a version older than an already acknowledged write; the first
    STALE_EXAMPLES of them, in the order they were sent."""
    found = stale_reads(reads, writes)
    return len(found), found[:STALE_EXAMPLES]


def version_of(body: bytes) -> int:
    """The version in a PUT's reply; ValueError (a failed exchange) when it has none."""
    try:
        return int(json.loads(body)["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"a reply without a version: {body[:80]!r}") from exc


def classify(reply: Reply, post_id: int) -> tuple[Outcome, int, str]:
    """(outcome, version or -1, what was wrong) for the reply to `GET .../post_id`."""
    if reply.status == 200:
        try:
            document = json.loads(reply.body)
            returned_id, version = document["id"], document["version"]
        except (ValueError, KeyError, TypeError) as exc:
            return Outcome.WRONG, -1, f"200 with an unreadable body ({exc}): {reply.body[:80]!r}"
        if returned_id != post_id or not isinstance(version, int):
            return Outcome.WRONG, -1, f"200 with post {returned_id!r}, version {version!r}"
        return Outcome.OK, version, ""
    if reply.status == 503:
        try:
            error = json.loads(reply.body)["error"]
            clear = bool(error["code"]) and bool(error["message"])
        except (ValueError, KeyError, TypeError):
            clear = False
        if clear and reply.header("retry-after"):
            return Outcome.UNAVAILABLE, -1, f"503 {error['code']}"
        return Outcome.FAILED, -1, f"503 without a JSON error and Retry-After: {reply.body[:80]!r}"
    return Outcome.FAILED, -1, f"HTTP {reply.status}: {reply.body[:80]!r}"


class Load:
    """Readers, the writer and the scraper against one Postal, from `start()` to `stop()`."""

    def __init__(
        self,
        postal: PostalChild,
        post_ids: Sequence[int],
        *,
        readers: int,
        rate: float,
        hang_bound: float,
        seed: int = 0,
        writer: PostalChild | None = None,
    ) -> None:
        self.postal = postal  # what the readers and the chase reads read from
        self.writer_postal = writer or postal  # what the writer writes through
        self.post_ids = list(post_ids)
        self.readers = readers
        # Each reader sends its next read one interval after its previous send (or at once when
        # the reply took longer): `rate` reads/s in all. 0: back to back.
        self.interval = readers / rate if rate > 0 else 0.0
        self.hang_bound = hang_bound
        self.reads = ReadLog()
        self.writes = WriteLog()
        self.scrapes: list[Scrape] = []
        self.scrape_errors: list[str] = []
        self._random = random.Random(seed)
        self._requests = [
            postal.path_target(f"{POSTS_PATH}/{post_id}").request() for post_id in self.post_ids
        ]
        self._index = {post_id: index for index, post_id in enumerate(self.post_ids)}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._scraper: asyncio.Task[None] | None = None

    def start(self) -> None:
        count = len(self.post_ids)
        self._tasks = [
            asyncio.create_task(
                self._reader(reader * count // self.readers, reader * self.interval / self.readers)
            )
            for reader in range(self.readers)
        ]
        self._tasks.append(asyncio.create_task(self._writer()))
        self._scraper = asyncio.create_task(self._scrape_loop())

    async def stop(self) -> None:
        """Stop sending; wait for the replies in flight (each bounded by `hang_bound`)."""
        self._stopping = True
        try:
            await asyncio.gather(*self._tasks)
        finally:
            if self._scraper is not None:
                self._scraper.cancel()
                await asyncio.gather(self._scraper, return_exceptions=True)
        self.scrapes.append(await self.postal.scrape())

    async def cancel(self) -> None:
        """Stop at once (the run failed or was interrupted)."""
        self._stopping = True
        tasks = [*self._tasks, *([self._scraper] if self._scraper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def mark(self) -> Scrape:
        """A scrape now (at a phase boundary), kept with the others."""
        scrape = await self.postal.scrape()
        self.scrapes.append(scrape)
        return scrape

    async def _scrape_loop(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_INTERVAL)
            try:
                self.scrapes.append(await self.postal.scrape())
            except (BenchError, OSError, TimeoutError) as exc:
                # A scrape lost under the fault (Postal too busy to answer in time) costs one
                # point of the recovery timeline, not the rest of it.
                self.scrape_errors.append(str(exc))

    async def _reader(self, index: int, stagger: float) -> None:
        perf = time.perf_counter
        target = self.postal.target
        count = len(self.post_ids)
        connection: Connection | None = None
        next_send = perf() + stagger  # readers spread over one interval, not all at once
        try:
            while True:
                if (wait := next_send - perf()) > 0:
                    await asyncio.sleep(wait)
                if self._stopping:
                    break
                post_id, request = self.post_ids[index], self._requests[index]
                index = (index + 1) % count
                sent = perf()
                next_send = max(next_send + self.interval, sent)
                try:
                    if connection is None:
                        connection = await Connection.open(target)
                    async with asyncio.timeout(self.hang_bound - (perf() - sent)):
                        reply = await connection.exchange(request)
                except (*_FAILURES, TimeoutError) as exc:
                    self._record_failure(sent, post_id, exc)
                else:
                    self._record_reply(sent, post_id, reply)
                    if connection.reusable:
                        continue
                if connection is not None:
                    await connection.aclose()
                    connection = None
                await asyncio.sleep(RECONNECT_PAUSE)
        finally:
            if connection is not None:
                await connection.aclose()

    def _record_reply(self, sent: float, post_id: int, reply: Reply) -> None:
        outcome, version, detail = classify(reply, post_id)
        self.reads.add(sent, time.perf_counter() - sent, post_id, outcome, version, detail)

    def _record_failure(
        self, sent: float, post_id: int, exc: BaseException, label: str = ""
    ) -> None:
        """A read with no reply: hung past the bound, or failed (the 2 s connect timeout and
        every refused, reset or unreadable exchange)."""
        elapsed = time.perf_counter() - sent
        outcome, detail = Outcome.FAILED, f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            hung = elapsed >= self.hang_bound
            outcome = Outcome.HUNG if hung else Outcome.FAILED
            detail = f"no reply in {self.hang_bound:g}s" if hung else "connect timed out"
        self.reads.add(sent, elapsed, post_id, outcome, -1, label + detail)

    async def _chase(self, post_id: int, connection: Connection | None) -> Connection | None:
        """Read `post_id` right after its write returned, as a reader would; the connection
        to use next time (None after a failure).

        Chase reads come only after accepted writes, so their connection may sit idle longer
        than the server keeps it (uvicorn: 5 s, during a database outage): a GET that fails on
        a reused connection is sent once more on a new one, as HTTP clients do.
        """
        perf = time.perf_counter
        request = self._requests[self._index[post_id]]
        sent = perf()
        try:
            if connection is not None:
                try:
                    async with asyncio.timeout(self.hang_bound):
                        reply = await connection.exchange(request)
                except _FAILURES:
                    await connection.aclose()
                    connection = None
            if connection is None:
                connection = await Connection.open(self.postal.target)
                async with asyncio.timeout(self.hang_bound - (perf() - sent)):
                    reply = await connection.exchange(request)
        except (*_FAILURES, TimeoutError) as exc:
            self._record_failure(sent, post_id, exc, "chase read: ")
        else:
            self._record_reply(sent, post_id, reply)
            if connection.reusable:
                return connection
        if connection is not None:
            await connection.aclose()
        return None

    async def _writer(self) -> None:
        perf = time.perf_counter
        target = self.writer_postal.target
        revision = 1
        connection: Connection | None = None
        chaser: Connection | None = None
        try:
            while not self._stopping:
                post_id = self._random.choice(self.post_ids)
                revision += 1
                path = f"{POSTS_PATH}/{post_id}"
                document = post_document(post_id, revision)
                request = self.writer_postal.write_request("PUT", path, document)
                sent = perf()
                try:
                    if connection is None:
                        connection = await Connection.open(target)
                    async with asyncio.timeout(self.hang_bound):
                        reply = await connection.exchange(request)
                    returned = perf()
                    if reply.status == 200:
                        self.writes.accept(post_id, version_of(reply.body), returned)
                        chaser = await self._chase(post_id, chaser)
                    else:
                        detail = f"PUT {path}: HTTP {reply.status}: {reply.body[:80]!r}"
                        self.writes.fail(sent, returned, detail)
                except (*_FAILURES, TimeoutError) as exc:
                    self.writes.fail(sent, perf(), f"PUT {path}: {type(exc).__name__}: {exc}")
                    if connection is not None:
                        await connection.aclose()
                        connection = None
                if connection is not None and not connection.reusable:
                    await connection.aclose()
                    connection = None
                await asyncio.sleep(self._random.uniform(*WRITE_PAUSE))
        finally:
            for open_connection in (connection, chaser):
                if open_connection is not None:
                    await open_connection.aclose()
