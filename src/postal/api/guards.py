"""Checks every write passes before any of it is read: the bearer token and the size limit.

A plain ASGI middleware rather than a FastAPI dependency, so that an unauthenticated or oversized
request is refused before its body is read or parsed, and so that reads (GET, HEAD) pay one
method comparison and one set lookup and nothing else. The set is of the reads that need the
token too (`guarded_reads`: `/status`, which names the servers and the key prefix, and
`/metrics` or the OpenAPI pages when their settings ask for it).

Streamed routes (the CSV import) have a limit of their own, far above a single write's: their
body is never held whole, so the ordinary limit, which protects the JSON parser, does not apply.
Either limit is enforced on the declared Content-Length before anything is read, and again while
the body streams in (a chunked upload declares nothing).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.api.errors import RequestTooLarge

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class WriteGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_request_bytes: int,
        streamed: Mapping[str, int] | None = None,
        guarded_reads: frozenset[str] = frozenset(),
    ) -> None:
        """`streamed`: path -> byte limit, for the routes that stream their body;
        `guarded_reads`: the paths whose reads need the token too (only with a token)."""
        self.app = app
        self._token = None if token is None else token.encode()
        self._limit = max_request_bytes
        self._streamed = dict(streamed or {})
        self._guarded_reads = guarded_reads if token is not None else frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in _READS:
            if scope["path"] in self._guarded_reads and not self._authorized(
                dict(scope["headers"]).get(b"authorization")
            ):
                message = f"{scope['path']} needs Authorization: Bearer <token>"
                await _refuse(send, 401, "unauthorized", message)
                return
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._token is not None and not self._authorized(headers.get(b"authorization")):
            await _refuse(send, 401, "unauthorized", "writes need Authorization: Bearer <token>")
            return
        limit = self._streamed.get(scope.get("path", ""), self._limit)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"the request body is larger than the limit of {limit} bytes"
            await _refuse(send, 413, "too_large", message)
            return
        await self.app(scope, _counting(receive, limit), send)

    def _authorized(self, header: bytes | None) -> bool:
        assert self._token is not None
        scheme, _, credentials = (header or b"").partition(b" ")
        # compare_digest takes the same time wherever the first difference is
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive`, raising RequestTooLarge once a body without Content-Length passes `limit`."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(limit)
        return message

    return counted


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
