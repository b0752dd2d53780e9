"""The access log, opt-in (`POSTAL_ACCESS_LOG`): one line per HTTP request, with its request id.

Each line is a record of the `postal.access` logger at INFO, so it is written like every other
line (JSON when stderr is not a terminal, redacted, with `request_id`), with the fields
`method`, `path`, `status`, `duration_ms`, `bytes` (of the response body), `client` (its
address), and `query` when there is one. The path and query are cut to `MAX_TEXT` characters:
they are the client's bytes. The logger's level is set to INFO when the log is on, so that
`POSTAL_LOG_LEVEL=WARNING` quiets the rest and keeps this.

Two entrances, as for the HTTP metrics: requests that reach the app pass `AccessLogMiddleware`,
inside the request-id middleware (the id is in the log context); the fast lane
(`api/fast_reads.py`), which answers cached reads before any of that, calls `AccessLog.write`
itself. Off (the default), there is no layer at all and the fast lane tests one attribute
for None: nothing else. Requests refused by admission control are not logged: a refusal must
stay cheaper than the work it refuses (`api/admission.py`); they are counted in
`postal_http_requests_refused_total`.

uvicorn's own access log stays off (`postal serve` turns it off): it knows no request id, and
writes in a format of its own.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.api.http_metrics import FAILED_STATUS
from postal.observability.logging import request_id

ACCESS_LOGGER = "postal.access"
MAX_TEXT = 512  # characters of a path or query string kept in a line
_clock = time.perf_counter


class AccessLog:
    """Writes one line per request to `logger` (`postal.access`, set to INFO)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._logger.setLevel(logging.INFO)

    def write(self, scope: Scope, status: int, seconds: float, sent: int, rid: str | None) -> None:
        """The line for one request: `sent` bytes of body, in `seconds`; `rid` its id."""
        client = scope.get("client")
        fields: dict[str, object] = {
            "method": scope["method"][:16],
            "path": scope["path"][:MAX_TEXT],
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": sent,
            "client": client[0] if client else None,
        }
        query: bytes = scope.get("query_string", b"")
        if query:
            fields["query"] = query[:MAX_TEXT].decode("latin-1")
        if rid is not None:
            fields["request_id"] = rid
        self._logger.info("request", extra=fields)


class AccessLogMiddleware:
    """The access log for the requests that reach the app (not the fast lane's)."""

    def __init__(self, app: ASGIApp, log: AccessLog) -> None:
        self.app = app
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = _clock()
        status = FAILED_STATUS
        sent = 0

        async def send_and_count(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            # The id the request-id middleware (outside this one) put in the log context.
            self._log.write(scope, status, _clock() - started, sent, request_id.get())
