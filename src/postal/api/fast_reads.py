"""The hottest route, `GET /api/v1/posts/{id}`, answered before the framework sees the request.

A cache hit costs one Redis round trip; measured under `postal bench http`, passing the request
through FastAPI's middleware stack and router cost more than that round trip. This pure ASGI
middleware recognises the route by its path, asks the service for the cached entry, and sends
the stored bytes. Anything it does not fully own (an id that is not a plain number, any other
route or method) goes on to the app unchanged, where the Starlette route in `routes/reads.py`
answers in the same way and with the same errors: both send what `read_answer`
(`api/read_answer.py`) makes of the entry and the request's headers.

`PostalApp` puts it outside the whole stack FastAPI builds (server errors, FastAPI's telemetry
and body-limit middlewares, ours), so it answers its own unexpected errors: a 500 in the same
shape, logged. It is outside the request-id, HTTP-metrics and access-log middlewares too, and
does their work itself for the requests it answers (the id in the log context and the response
headers, one histogram observation, the access log's line and the request's span when they are
on): each middleware layer costs a coroutine and a `send` wrapper per request, which under
`postal bench http` took Postal's cached GET from above the peer's req/s to below it.

Being the outermost layer, it is also where admission is checked (`api/admission.py`): it counts
the HTTP requests in flight, its own and the app's, and refuses one over the bound before
anything else is done for it. Then an admitted request starts within the loop-turn budget
(`api/turn_budget.py`), or in a later turn.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from postal.api.access_log import AccessLog, AccessLogMiddleware
from postal.api.admission import UNCOUNTED_PATHS, refuse
from postal.api.errors import database_unavailable, internal_error, not_cached
from postal.api.http_metrics import FAILED_STATUS, HttpMetrics, RouteTemplates
from postal.api.loopback import LoopbackOnly
from postal.api.read_answer import read_answer
from postal.api.request_id import HEADER, RequestIdMiddleware, RequestIds
from postal.api.routes.reads import post_id_or_none
from postal.api.routes.reads import routes as read_routes
from postal.api.tracing import RequestSpans, TracingMiddleware
from postal.api.turn_budget import TurnBudget
from postal.observability.logging import request_id
from postal.posts.errors import DatabaseUnavailable
from postal.posts.service import PostService

logger = logging.getLogger("postal.api")

PREFIX = "/api/v1/posts/"
# The route this lane stands in for, left in scope["route"] as Starlette's router does: the HTTP
# metrics label requests with its template.
ROUTE = next(route for route in read_routes if getattr(route, "name", None) == "get_post")
TEMPLATE: str = ROUTE.path_format


class FastReads:
    """The outermost layer: admission, the turn budget, then the fast lane, else `app`.
    `max_in_flight`: the bound on HTTP requests in flight (None: no bound); `in_flight`: how
    many there are now. `turn_budget`: None, requests start as soon as they arrive."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ids: RequestIds | None = None,
        metrics: HttpMetrics | None = None,
        max_in_flight: int | None = None,
        access_log: AccessLog | None = None,
        tracing: RequestSpans | None = None,
        turn_budget: TurnBudget | None = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.app = app
        self._ids = ids or RequestIds()
        self._metrics = metrics
        self._access_log = access_log  # None: off, and this lane pays one test for it
        self._tracing = tracing  # None: off, and so is this one
        self.max_in_flight = max_in_flight
        self._limit = sys.maxsize if max_in_flight is None else max_in_flight
        self._turn_budget = turn_budget
        self.in_flight = 0  # one event loop per worker: a plain integer, no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: not counted
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in UNCOUNTED_PATHS:  # probes and /metrics: answered however busy (admission.py)
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self._limit:
            await self._refuse(scope, send)
            return
        self.in_flight += 1
        try:
            put_off = self._turn_budget is not None and await self._turn_budget.wait()
            if put_off and self._metrics is not None:
                self._metrics.deferred()
            if scope["method"] == "GET" and path.startswith(PREFIX):
                post_id = post_id_or_none(path[len(PREFIX) :])
                if post_id is not None:
                    await self._answer(scope, receive, send, post_id)
                    return
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        """Admission refused: counted, and answered without reading the body."""
        if self._metrics is not None:
            self._metrics.refused()
        await refuse(send, self._ids.of(scope).encode("ascii"))

    async def _answer(self, scope: Scope, receive: Receive, send: Send, post_id: int) -> None:
        """What the request-id, metrics and access-log middlewares would do, around
        `_get_post`."""
        started = time.perf_counter()
        scope["route"] = ROUTE
        rid = self._ids.of(scope)
        token = request_id.set(rid)
        status, sent = FAILED_STATUS, 0
        try:
            if self._tracing is None:
                status, sent = await self._get_post(
                    scope, receive, send, post_id, rid.encode("ascii")
                )
            else:
                status, sent = await self._tracing.serve(
                    scope,
                    TEMPLATE,
                    lambda: self._get_post(scope, receive, send, post_id, rid.encode("ascii")),
                )
        finally:
            request_id.reset(token)
            if self._metrics is not None:
                self._metrics.record("GET", TEMPLATE, status, time.perf_counter() - started)
            if self._access_log is not None:
                elapsed = time.perf_counter() - started
                self._access_log.write(scope, status, elapsed, sent, rid)

    async def _get_post(
        self, scope: Scope, receive: Receive, send: Send, post_id: int, rid: bytes
    ) -> tuple[int, int]:
        """Answer the request; the status and the body's length sent."""
        service: PostService = scope["app"].state.posts
        try:
            entry = await service.read_post(post_id)
        except DatabaseUnavailable as exc:
            response = database_unavailable(exc, not_cached(post_id))
            return await _send(response, rid, scope, receive, send)
        except Exception:
            logger.exception("unhandled error on GET %s", scope["path"])
            return await _send(internal_error(), rid, scope, receive, send)
        status, headers, body = read_answer(post_id, entry, scope["headers"])
        headers.append((HEADER, rid))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status, len(body)


async def _send(
    response: Response, rid: bytes, scope: Scope, receive: Receive, send: Send
) -> tuple[int, int]:
    response.raw_headers.append((HEADER, rid))
    await response(scope, receive, send)
    return response.status_code, len(response.body)


class PostalApp(FastAPI):
    """FastAPI, with `FastReads` in front of everything (admission, then the fast lane), then
    request ids (so every log line of a request carries its id) and the HTTP metrics around the
    stack FastAPI builds. `measure`, set by `create_app`, builds the metrics middleware;
    `FastReads` records its own requests and refusals in it and gives them ids from the same
    maker. `max_in_flight`, set by `create_app`: the admission bound (None: no bound).
    `loopback_only`, set by `create_app` when there is no token: `LoopbackOnly` goes in front
    of all of it, so not even a cached read is answered to anyone else. `access_log`, set by
    `create_app` when POSTAL_ACCESS_LOG is on: the access log, written by a layer inside the
    request ids and by `FastReads` for its own requests. `tracing`, set by `create_app` when
    POSTAL_TRACING is on: the request spans (`api/tracing.py`), made the same two ways.
    `turn_budget`, set by `create_app`: POSTAL_TURN_BUDGET in seconds (None: off)."""

    measure: Callable[[ASGIApp], HttpMetrics] | None = None
    max_in_flight: int | None = None
    loopback_only: bool = False
    access_log: AccessLog | None = None
    tracing: RequestSpans | None = None
    turn_budget: float | None = None

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = super().build_middleware_stack()
        metrics = None
        if self.measure is not None:
            app = metrics = self.measure(app)
        if self.access_log is not None:  # off: no layer at all
            app = AccessLogMiddleware(app, self.access_log)
        if self.tracing is not None:  # off: no layer either
            app = TracingMiddleware(app, self.tracing, RouteTemplates(self.router.routes))
        ids = RequestIds()
        inner = RequestIdMiddleware(app, ids)
        outer: ASGIApp = FastReads(
            inner,
            ids=ids,
            metrics=metrics,
            max_in_flight=self.max_in_flight,
            access_log=self.access_log,
            tracing=self.tracing,
            turn_budget=None if self.turn_budget is None else TurnBudget(self.turn_budget),
        )
        return LoopbackOnly(outer) if self.loopback_only else outer
