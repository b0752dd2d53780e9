"""The reference apps `postal bench http` serves next to Postal, as uvicorn factories.

- `floor_app`: a bare Starlette route answering constant bytes: what the HTTP server and the
  framework cost on their own, the most any app on this server can do.
- `peer_app`: what a user would write without Postal: a plain Starlette route doing one
  `redis.asyncio` GET per request on a BlockingConnectionPool sized like Postal's read pool, and
  answering the bytes (on other topologies, redis.asyncio as
  `redis_topologies.plain_reads` describes: Sentinel's `master_for`, `RedisCluster`, a pool per
  replica).

Both answer `GET /api/v1/posts/{post_id}` with `application/json`, as Postal does, so the load
generator sends the very same request to all three. They are configured through the environment
(uvicorn starts them in a process of their own) and build everything in the factory or the
lifespan, nothing at import:

| variable | used by | meaning |
|---|---|---|
| `POSTAL_BENCH_BODY_BYTES` | floor | size of the constant body, in bytes |
| `POSTAL_BENCH_REDIS_URL` | peer | the Redis to read (any URL `postal bench http` takes) |
| `POSTAL_BENCH_KEY_PREFIX` | peer | the key read is this prefix followed by the post id |
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from postal_bench.redis_topologies import plain_reads

POST_ROUTE = "/api/v1/posts/{post_id}"  # the path of Postal's read, for all three targets
MEDIA_TYPE = "application/json"
PEER_POOL_SIZE = 50  # connections: Postal's default read pool size (READ_REDIS_POOL_SIZE)
PEER_TIMEOUT = 5.0  # s: bounds the peer's dials, reads and pool waits (redis-py's default: none)

BODY_BYTES = "POSTAL_BENCH_BODY_BYTES"
REDIS_URL = "POSTAL_BENCH_REDIS_URL"
KEY_PREFIX = "POSTAL_BENCH_KEY_PREFIX"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"{name} is not set; `postal bench http` sets it for its servers")
    return value


def constant_body(size: int) -> bytes:
    """A JSON document of exactly `size` bytes (at least 2): `{"pad":"xxx..."}`, or `{}` padded
    with spaces when too small for that."""
    frame = b'{"pad":""}'
    if size < len(frame):
        return b"{}" + b" " * max(0, size - 2)
    return b'{"pad":"' + b"x" * (size - len(frame)) + b'"}'


def floor_app() -> Starlette:
    body = constant_body(int(_env(BODY_BYTES)))

    async def read_post(request: Request) -> Response:
        return Response(body, media_type=MEDIA_TYPE)

    return Starlette(routes=[Route(POST_ROUTE, read_post)])


def peer_app() -> Starlette:
    url = _env(REDIS_URL)
    prefix = _env(KEY_PREFIX)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with plain_reads(url, pool_size=PEER_POOL_SIZE, timeout=PEER_TIMEOUT) as get:
            app.state.get = get
            yield

    async def read_post(request: Request) -> Response:
        value = await request.app.state.get(prefix + request.path_params["post_id"])
        if not isinstance(value, bytes):  # None: a miss
            return Response(status_code=404)
        return Response(value, media_type=MEDIA_TYPE)

    return Starlette(routes=[Route(POST_ROUTE, read_post)], lifespan=lifespan)
