"""The in-process harness of the fast-lane micro-benchmarks (`postal_bench.access_log`,
`postal_bench.tracing`): one cached ~1 KB entry, the ASGI scope of its GET, a `receive` and a
`send` that do nothing, and the CPU a request costs over many calls of Postal's outermost layer.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from postal.api.fast_reads import FastReads
from postal.posts.entries import Entry

BODY = b'{"id":1,"title":"t","body":"' + b"x" * 900 + b'"}'  # a ~1 KB post
ENTRY = Entry(200, '"v1"', BODY)


async def inner(scope: Any, receive: Any, send: Any) -> None:
    """The app behind the fast lane, which never gets a request here."""
    raise AssertionError("the fast lane answers every request here")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def _scope(app: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/posts/1",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "app": app,
    }


async def cpu_per_request(lane: FastReads, posts: Any, requests: int) -> float:
    """CPU seconds a request over `requests` calls of `lane`, its app's service `posts`."""
    app = SimpleNamespace(state=SimpleNamespace(posts=posts))
    scopes = [_scope(app) for _ in range(requests)]
    started = time.process_time()
    for scope in scopes:
        await lane(scope, _receive, _send)
    return (time.process_time() - started) / requests
