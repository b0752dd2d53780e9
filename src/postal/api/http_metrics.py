"""`postal_http_request_duration_seconds{method,route,status}`, measured outermost.

A pure ASGI middleware in front of everything, the fast lane (`api/fast_reads.py`) included, so
every request is timed from the moment the app is called until its response has been sent.

The route label is the matched route's template (`/api/v1/posts/{post_id}`), never the raw path,
so ids and scanners cannot grow the label set. Where it comes from, with FastAPI 0.165 and
Starlette 1.x: FastAPI leaves its own routes (`APIRoute`) in `scope["route"]`, whose
`path_format` is the template, and so does the fast lane; for a plain Starlette route (the hot
reads in `routes/reads.py`) FastAPI's router sets only `scope["endpoint"]`, which is looked up in
a map from endpoint to template built from the app's routes. A request no route matched (a 404,
a slash redirect) is `unmatched`; an unusual method is `other`. The label values are thus a fixed
set, and each (method, route, status) keeps its batched histogram child in a dict
(`observability.batching`): a request costs two clock reads, a few dict lookups and a bisect.

/metrics itself is measured like any route (route="/metrics"), so scrape time shows too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.observability.batching import HistogramBatch
from postal.observability.metrics import LATENCY_BUCKETS, PostalMetrics

UNMATCHED = "unmatched"
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FAILED_STATUS = 500  # an exception escaped before any response started
_clock = time.perf_counter


class RouteTemplates:
    """The template of the route that handled a request; see the module docstring."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes  # the app's live list: routes added later are found too
        self._by_endpoint: dict[int, str] = {}  # id(endpoint): routes keep their endpoints alive

    def __call__(self, scope: Scope) -> str:
        template = getattr(scope.get("route"), "path_format", None)
        if isinstance(template, str):
            return template
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        found = self._by_endpoint.get(id(endpoint))
        if found is None:
            found = self._lookup(endpoint)
        return found

    def _lookup(self, endpoint: object) -> str:
        template = UNMATCHED  # an endpoint of no top-level route: remembered as such
        for route in self._routes:
            path_format = getattr(route, "path_format", None)
            if getattr(route, "endpoint", None) is endpoint and isinstance(path_format, str):
                template = path_format
                break
        self._by_endpoint[id(endpoint)] = template
        return template


class HttpMetrics:
    """Times each HTTP request into `postal_http_request_duration_seconds`; `routes`: the app's
    routes, for the templates of plain Starlette routes."""

    def __init__(
        self, app: ASGIApp, *, metrics: PostalMetrics, routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._templates = RouteTemplates(routes)
        self._bound: dict[tuple[str, str, int], HistogramBatch] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = _clock()
        status = FAILED_STATUS

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            elapsed = _clock() - started
            method = scope["method"]
            if method not in METHODS:  # before the dict: random methods must not grow it
                method = OTHER_METHOD
            key = (method, self._templates(scope), status)
            child = self._bound.get(key)
            if child is None:
                child = self._bind(key)
            child.observe(elapsed)

    def _bind(self, key: tuple[str, str, int]) -> HistogramBatch:
        method, route, status = key
        metrics = self._metrics
        child = metrics.batches.histogram(
            metrics.http_request_seconds, LATENCY_BUCKETS, method, route, str(status)
        )
        self._bound[key] = child
        return child
