"""Request ids: one per HTTP request, in every log line the request causes and in its response.

A pure ASGI middleware, the outermost layer (`PostalApp`), so the cached-read fast lane and
everything behind it log with the id. An incoming `X-Request-ID` is kept when it is sane (1 to
64 characters of letters, digits and `-_.:=+/`), so a proxy's or a client's id ties their logs
to ours; anything else is ignored and an id is made here: the log must never carry arbitrary
client bytes (newlines, quotes, megabytes). The id is echoed in the response's `X-Request-ID`.

It runs on every request, cache hits included (5,000+ per second per core), so making an id
costs one counter step and one format: a random per-process prefix (48 bits, drawn when the
middleware is built, in each worker) and a counter, `3f9a1c7e5b2d-0000002a`. Unique across
processes and restarts in practice, and readable in order within one process. uuid4 would cost
a `urandom` system call per request for uniqueness the prefix already gives.
"""

from __future__ import annotations

import itertools
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.observability.logging import request_id

HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9_.:=+/-]{1,64}")


class RequestIds:
    """Makes this process's request ids: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"

    def of(self, scope: Scope) -> str:
        """The request's id: its sane `X-Request-ID`, else a new one."""
        for name, value in scope["headers"]:
            if name == HEADER:
                incoming = sane_request_id(value)
                if incoming is not None:
                    return incoming
                break
        return self()


def sane_request_id(value: bytes) -> str | None:
    """An incoming id as text if it is safe to log and echo, else None."""
    return value.decode("ascii") if _SANE.fullmatch(value) else None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, ids: RequestIds | None = None) -> None:
        self.app = app
        self._ids = ids or RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = self._ids.of(scope)
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list: the one given may belong to a response object.
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
