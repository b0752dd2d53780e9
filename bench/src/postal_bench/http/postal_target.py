"""Postal as a target of `postal bench http`: its environment, one post, and that post's cache
entry filled before anything is measured; afterwards, how many reads its near cache answered.

The bench measures cache hits, so it must know the entry is there: fills happen in the
background after a miss, so it reads the post, then polls Redis until a key under Postal's
(unique) prefix holds the body it was served. The body read is also what the floor and the peer
answer, so all three send the same bytes.

The contract with Postal (see docs/configuration.md): `READ_REDIS_URL`/`WRITE_REDIS_URL`,
`REDIS_KEY_PREFIX`, `DATABASE_URL`, `POSTAL_API_TOKEN` and `NEAR_CACHE_ENABLED` from the
environment; `POST /api/v1/posts` with a bearer token answers 201 and JSON with the post's "id";
`GET /api/v1/posts/{id}` answers the post; `/metrics` counts the near cache's hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from postal.observability.metrics import NEAR_CACHE_READS
from postal.stats.scrape import Scrape
from postal_bench.errors import BenchError
from postal_bench.http.servers import ServerProcess
from postal_bench.loadgen import fetch
from postal_bench.redis_topologies import masked, plain_primary

POSTS_PATH = "/api/v1/posts"
READY_PATH = "/healthz"
METRICS_PATH = "/metrics"
FILL_TIMEOUT = 5.0  # s: how long the bench waits to see the post's cache entry
FILL_POLL = 0.05  # s between looks
TEXT = "Postal serves posts from Redis at close to Redis's own speed. "  # the post's body, repeated


@dataclass(frozen=True, slots=True)
class PostalConfig:
    """What the Postal process is started with: its environment, its key prefix, its token."""

    environment: dict[str, str]
    key_prefix: str
    token: str

    @classmethod
    def create(
        cls,
        redis_url: str,
        database_url: str | None,
        data_dir: Path,
        write_url: str | None = None,
        *,
        near_cache: bool = True,
    ) -> PostalConfig:
        """`redis_url` for reads and `write_url` (by default the same) for writes, a unique key
        prefix, the database (SQLite in `data_dir` by default), a random API token, the near
        cache on or off (whatever the caller's environment says), warnings only in the log."""
        prefix = f"postal-bench-http:{uuid.uuid4().hex[:12]}:"
        token = secrets.token_urlsafe(24)
        environment = {
            "READ_REDIS_URL": redis_url,
            "WRITE_REDIS_URL": write_url or redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{data_dir}/bench.db",
            "POSTAL_API_TOKEN": token,
            "POSTAL_DATA_DIR": str(data_dir),
            "POSTAL_LOG_LEVEL": "WARNING",
            "NEAR_CACHE_ENABLED": "true" if near_cache else "false",
        }
        return cls(environment, prefix, token)


@dataclass(frozen=True, slots=True)
class PreparedPost:
    post_id: str
    path: str  # what the load generator GETs
    body: bytes  # the response body Postal serves for it
    cache_confirmed: bool  # its cache entry was seen in Redis before measuring


def post_document(value_size: int) -> bytes:
    """A post whose body is `value_size` characters of text."""
    repeats = value_size // len(TEXT) + 1
    document = {
        "title": "postal bench http",
        "body": (TEXT * repeats)[:value_size],
        "author": "postal-bench",
        "tags": ["bench", "http"],
    }
    return json.dumps(document).encode()


async def create_post(server: ServerProcess, config: PostalConfig, value_size: int) -> str:
    """Create the one post the bench reads; its id. BenchError naming what Postal answered."""
    headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {config.token}")]
    try:
        reply = await fetch(
            server.base_url + POSTS_PATH, "POST", post_document(value_size), headers
        )
    except (OSError, EOFError, ValueError, TimeoutError) as exc:
        raise server.failure(f"POST {POSTS_PATH} failed: {type(exc).__name__}: {exc}") from exc
    if reply.status != 201:
        excerpt = reply.body[:200].decode(errors="replace")
        hint = " (is the posts API there?)" if reply.status in (404, 405) else ""
        raise server.failure(
            f"POST {POSTS_PATH} answered {reply.status}{hint}, expected 201: {excerpt}"
        )
    try:
        return str(json.loads(reply.body)["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise server.failure(f"POST {POSTS_PATH} answered no JSON with an id: {exc}") from exc


async def read_post(server: ServerProcess, path: str) -> bytes:
    reply = await fetch(server.base_url + path)
    if reply.status != 200:
        raise server.failure(f"GET {path} answered {reply.status}, expected 200")
    return reply.body


async def entry_in_cache(redis_url: str, prefix: str, body: bytes) -> bool:
    """Whether a string key under `prefix` holds `body` (framed or not), on what takes
    `redis_url`'s writes (a server, a Sentinel's primary, every node of a cluster)."""
    try:
        async with plain_primary(redis_url) as client:
            async for key in client.scan_iter(match=f"{prefix}*", count=1000, _type="STRING"):
                value = await client.get(key)
                if value is not None and body in value:
                    return True
    except BenchError:
        raise
    except Exception as exc:  # whatever redis-py raises, the bench cannot confirm the fill
        raise BenchError(f"cannot look into Redis at {masked(redis_url)}: {exc}") from exc
    return False


async def prepare_post(
    server: ServerProcess, config: PostalConfig, redis_url: str, value_size: int
) -> PreparedPost:
    """Create the post, read it twice, and wait (up to FILL_TIMEOUT) for its cache entry in
    `redis_url` (where Postal writes)."""
    post_id = await create_post(server, config, value_size)
    path = f"{POSTS_PATH}/{post_id}"
    body = await read_post(server, path)
    await read_post(server, path)
    deadline = time.perf_counter() + FILL_TIMEOUT
    while not (confirmed := await entry_in_cache(redis_url, config.key_prefix, body)):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(FILL_POLL)
        body = await read_post(server, path)  # a miss again makes another fill
    return PreparedPost(post_id, path, body, confirmed)


async def delete_post(server: ServerProcess, config: PostalConfig, post_id: str) -> None:
    """Delete the bench's post (it may be in a PostgreSQL that outlives the bench); best effort."""
    headers = [("Authorization", f"Bearer {config.token}")]
    with contextlib.suppress(OSError, EOFError, ValueError, TimeoutError):
        await fetch(f"{server.base_url}{POSTS_PATH}/{post_id}", "DELETE", b"", headers)


async def near_cache_hits(server: ServerProcess) -> int | None:
    """Reads Postal's near cache has answered from memory so far (its workers' sum, from
    `/metrics`); None when the scrape fails or has no such series."""
    try:
        reply = await fetch(server.base_url + METRICS_PATH)
        if reply.status != 200:
            return None
        scrape = Scrape.parse(reply.body.decode(errors="replace"), time.perf_counter())
    except (OSError, EOFError, ValueError, TimeoutError):  # ScrapeError is a ValueError
        return None
    if not scrape.has(NEAR_CACHE_READS):
        return None
    return round(scrape.total(NEAR_CACHE_READS, outcome="hit"))
