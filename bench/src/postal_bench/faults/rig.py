"""What one fault runs against: its own Redis servers, proxies and DNS script, and a Postal child
(two, for a fault that needs one process to write while the other reads).

A `FaultRig` is built anew for every fault, so no fault inherits another's state:

- Redis: child `RedisServer`s of the rig's own (never the shared 6379), each started in a thread
  (start-up polls with sleeps) and cleaned up with the rig;
- `FaultProxy`s in front of whatever a fault needs to break (a Redis, the database);
- a `DnsScript` file, when Postal reaches Redis by the name `BENCH_HOST`;
- Postal: one uvicorn worker of `postal_bench.server_child` (the tuned profile, the scripted DNS)
  in a child process, with a key prefix and an API token of its own, on the run's database;
- the writer's Postal, when a fault asks for one (`use_writer_redis`): a second such process,
  same prefix, token and database, reaching Redis its own way; the writer writes through it
  while the readers read from the first (the near cache's faults: does one process learn in
  time of another's writes?).

The database (a scratch PostgreSQL database, or one the caller gives) is the run's: every fault
creates its own hot set of posts in it through Postal's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from postal.imports.ports import NewPost
from postal.posts.models import PostContent
from postal.stats.scrape import Scrape
from postal.storage.bulk import BulkWriter, WriteMethod
from postal.storage.db import create_engine
from postal_bench.errors import BenchError
from postal_bench.http.servers import ServerProcess, free_port
from postal_bench.loadgen import Connection, HttpTarget, Reply
from postal_bench.server_child import DNS_SCRIPT_VARIABLE, PROFILE_VARIABLE, server_command
from postal_testing.proxy import FaultProxy
from postal_testing.redis_servers import RedisServer
from postal_testing.resolver import DnsScript

POSTS_PATH = "/api/v1/posts"
READY_PATH = "/healthz"
METRICS_PATH = "/metrics"
REQUEST_TIMEOUT = 10.0  # s: a set-up request or a scrape not answered by then fails the run
SETUP_CONCURRENCY = 16  # connections reading the hot set once, to warm the cache


def post_content(index: int, revision: int) -> PostContent:
    """A post's content: small, and different at every revision (so each PUT is a real change)."""
    return PostContent(
        title=f"hot post {index} rev {revision}",
        body=f"revision {revision} of a post the fault matrix reads and rewrites. " * 4,
        author="postal-bench-faults",
        tags=("bench", "faults"),
    )


def post_document(index: int, revision: int) -> bytes:
    """`post_content` as the JSON body of a PUT."""
    content = post_content(index, revision)
    document = {
        "title": content.title,
        "body": content.body,
        "author": content.author,
        "tags": list(content.tags),
    }
    return json.dumps(document).encode()


async def create_hot_set(database_url: str, count: int) -> list[int]:
    """`count` new posts (version 1 each), inserted in one transaction; their ids.

    Straight into the database, not through Postal: a fault's Postal then starts with nothing
    pending (a create through an API whose Redis is broken would leave every new post's
    invalidation pending, and every read of it would bypass the cache), and it is quicker.
    """
    engine = create_engine(database_url, pool_size=1, timeout=REQUEST_TIMEOUT)
    try:
        async with engine.begin() as connection:
            writer = BulkWriter(connection, WriteMethod.INSERT)
            await writer.start()
            now = datetime.now(UTC)
            return await writer.create([NewPost(post_content(i, 1), now) for i in range(count)])
    except (OSError, DBAPIError) as exc:
        raise BenchError(f"cannot create the hot set: {exc}") from exc
    finally:
        await engine.dispose()


class PostalChild:
    """The Postal process of one fault, and the few requests the rig makes to it."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.server = server
        self.token = token
        self.target = HttpTarget("127.0.0.1", server.port)
        self._scraper: Connection | None = None
        self._scraping = asyncio.Lock()  # the scrape loop and the phase marks share one connection

    def path_target(self, path: str) -> HttpTarget:
        return HttpTarget(self.target.host, self.target.port, path)

    def write_request(self, method: str, path: str, body: bytes) -> bytes:
        headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {self.token}")]
        return self.path_target(path).request(method, body, headers)

    async def _each(self, count: int, request: Callable[[int], bytes]) -> list[Reply]:
        """Send `request(i)` for i in 0..count-1 over SETUP_CONCURRENCY keep-alive connections;
        the replies, in the order of i."""
        replies: list[Reply | None] = [None] * count
        indexes = iter(range(count))

        async def worker() -> None:
            connection: Connection | None = None
            try:
                for index in indexes:
                    if connection is None:
                        connection = await Connection.open(self.target)
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        replies[index] = await connection.exchange(request(index))
                    if not connection.reusable:
                        await connection.aclose()
                        connection = None
            finally:
                if connection is not None:
                    await connection.aclose()

        try:
            await asyncio.gather(*(worker() for _ in range(min(SETUP_CONCURRENCY, count))))
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            raise self.server.failure(f"a set-up request failed: {exc!r}") from exc
        return [reply for reply in replies if reply is not None]

    async def read_all(self, post_ids: Sequence[int]) -> None:
        """Read every post once (a miss, then a fill in the background): the cache warms."""
        requests = [self.path_target(f"{POSTS_PATH}/{post_id}").request() for post_id in post_ids]
        await self._each(len(requests), requests.__getitem__)

    async def scrape(self) -> Scrape:
        """One scrape of /metrics, on a keep-alive connection of its own (reopened if lost)."""
        async with self._scraping:
            return await self._scrape()

    async def _scrape(self) -> Scrape:
        request = self.path_target(METRICS_PATH).request()
        for attempt in (1, 2):
            if self._scraper is None:
                self._scraper = await Connection.open(self.target)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    reply = await self._scraper.exchange(request)
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                await self._scraper.aclose()
                self._scraper = None
                if attempt == 2:
                    raise BenchError(f"cannot scrape Postal's {METRICS_PATH}: {exc}") from exc
                continue
            if not self._scraper.reusable:
                await self._scraper.aclose()
                self._scraper = None
            if reply.status != 200:
                raise BenchError(f"Postal's {METRICS_PATH} answered {reply.status}")
            return Scrape.parse(reply.body.decode(), time.perf_counter())
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._scraper is not None:
            await self._scraper.aclose()
            self._scraper = None


async def server_step(step: Callable[[], None]) -> None:
    """Run a blocking step on a child server (start, restart) in a thread, to its end.

    Cancelled (Ctrl-C), it still waits for the thread: a server it starts afterwards would
    outlive the clean-up that ran meanwhile, its directory already removed. A server that does
    not start is a BenchError, said in one line rather than a traceback.
    """
    running = asyncio.ensure_future(asyncio.to_thread(step))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc


class FaultRig:
    """The servers, proxies and Postal child of one fault; everything stops on `aclose()`."""

    def __init__(self, work_dir: Path, database_url: str) -> None:
        self.work_dir = work_dir
        self.database_url = database_url
        self.dns_path = work_dir / "dns.json"
        self.key_prefix = f"postal-bench-faults:{uuid.uuid4().hex[:12]}:"
        self.token = secrets.token_urlsafe(24)
        self.environment: dict[str, str] = {}  # what the fault's set-up adds to Postal's
        self.writer_redis: dict[str, str] | None = None  # the writer's Postal's, if any
        self.postal: PostalChild | None = None
        self.writer: PostalChild | None = None  # the writer's Postal; None: `postal` takes writes
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()

    # -- servers ---------------------------------------------------------------------------

    async def redis(
        self, *, host: str = "127.0.0.1", port: int | None = None, extra_args: Sequence[str] = ()
    ) -> RedisServer:
        """A started child redis-server, stopped and removed with the rig."""
        server = RedisServer(port, extra_args, host=host)
        self._stack.callback(server.cleanup)
        await server_step(server.start)
        return server

    async def proxy(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> FaultProxy:
        """A started FaultProxy in pass-through mode, closed with the rig."""
        return await self._stack.enter_async_context(FaultProxy(upstream_port, upstream_host))

    async def database_proxy(self) -> FaultProxy:
        """Put a proxy between Postal and the database; Postal's DATABASE_URL goes through it."""
        url = make_url(self.database_url)
        proxy = await self.proxy(url.port or 5432, url.host or "127.0.0.1")
        proxied = url.set(host=proxy.host, port=proxy.port)
        self.environment["DATABASE_URL"] = proxied.render_as_string(hide_password=False)
        return proxy

    def script_dns(self, script: DnsScript) -> None:
        """Write (or rewrite, while Postal runs) the DNS script Postal resolves Redis with."""
        script.write(self.dns_path)
        self.environment[DNS_SCRIPT_VARIABLE] = str(self.dns_path)

    def use_redis(self, read_url: str, write_url: str | None = None) -> None:
        self.environment["READ_REDIS_URL"] = read_url
        self.environment["WRITE_REDIS_URL"] = write_url or read_url

    def use_writer_redis(self, read_url: str, write_url: str | None = None) -> None:
        """Writes go through a second Postal process, which reaches Redis at these URLs; the
        readers stay on the first."""
        self.writer_redis = {"READ_REDIS_URL": read_url, "WRITE_REDIS_URL": write_url or read_url}

    # -- Postal ----------------------------------------------------------------------------

    def postal_environment(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_KEY_PREFIX": self.key_prefix,
            "POSTAL_API_TOKEN": self.token,
            "POSTAL_DATA_DIR": str(self.work_dir),
            "POSTAL_LOG_LEVEL": "WARNING",
            PROFILE_VARIABLE: "tuned",
            **self.environment,
        }

    async def start_postal(self) -> PostalChild:
        """Start Postal with the environment built so far (and the writer's Postal, when the
        fault asked for one); return the readers' once both answer."""
        if "READ_REDIS_URL" not in self.environment:
            raise BenchError("a fault's set-up must say which Redis Postal uses")
        self.postal = await self._start_child("postal", self.postal_environment())
        if self.writer_redis is not None:
            environment = self.postal_environment() | self.writer_redis
            self.writer = await self._start_child("postal-writer", environment)
        return self.postal

    async def _start_child(self, name: str, environment: dict[str, str]) -> PostalChild:
        port = free_port()
        server = ServerProcess(name, server_command(port), port, environment, self.work_dir)
        # Stopped in a thread: its shutdown talks to Redis and the database through proxies
        # that run on this event loop, which a blocking wait would freeze.
        self._stack.push_async_callback(asyncio.to_thread, server.stop)
        server.start()
        await server.wait_ready(READY_PATH)
        child = PostalChild(server, self.token)
        self._stack.push_async_callback(child.aclose)
        return child
