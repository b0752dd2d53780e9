"""`postal_http_request_duration_seconds{method,route,status}`, measured outermost.

A pure ASGI middleware in front of everything, the fast lane (`api/fast_reads.py`) included, so
every request is timed from the moment the app is called until its response has been sent.

The route label is the matched route's template (`/api/v1/posts/{post_id}`), never the raw path,
so ids and scanners cannot grow the label set. Where it comes from, with FastAPI 0.165 and
Starlette 1.x: FastAPI leaves its own routes (`APIRoute`) in `scope["route"]`, whose
`path_format` is the template, and so does the fast lane; for a plain Starlette route (the hot
reads in `routes/reads.py`) FastAPI's router sets only `scope["endpoint"]`, which is looked up in
a map from endpoint to template built from the app's routes. A request the router never saw (a
401 or 413 from the write guard, which answers before it) is matched against the routes here, so
it keeps the template of the route it was for. A request no route matches (a 404, a slash
redirect) is `unmatched`; an unusual method is `other`. The label values are thus a fixed set,
and each (method, route, status) keeps its batched histogram child in a dict
(`observability.batching`): a request costs two clock reads, a few dict lookups and a bisect.

/metrics itself is measured like any route (route="/metrics"), so scrape time shows too.

Requests refused by admission control (`api/admission.py`) are not timed here: they are counted
in `postal_http_requests_refused_total`, with no labels, because finding their route would cost
the path matching that a refusal must not spend.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

from starlette.routing import BaseRoute, compile_path
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
        self._paths: list[tuple[re.Pattern[str], str, frozenset[str] | None]] = []
        self._matched_routes = -1  # len(routes) when `_paths` was compiled

    def __call__(self, scope: Scope) -> str:
        template = getattr(scope.get("route"), "path_format", None)
        if isinstance(template, str):
            return template
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return self._match(scope)
        found = self._by_endpoint.get(id(endpoint))
        if found is None:
            found = self._lookup(endpoint)
        return found

    def _match(self, scope: Scope) -> str:
        """The template of the route the router would pick (the first full match, else the
        first that wants another method), for a request answered before the router ran."""
        if len(self._routes) != self._matched_routes:  # routes added since: compile again
            self._paths = _compiled_paths(self._routes)
            self._matched_routes = len(self._routes)
        path, method = scope.get("path", ""), scope.get("method")
        partial = UNMATCHED
        for regex, template, methods in self._paths:
            if regex.match(path) is None:
                continue
            if methods is None or method in methods:
                return template
            if partial == UNMATCHED:
                partial = template
        return partial

    def _lookup(self, endpoint: object) -> str:
        template = UNMATCHED  # an endpoint of no top-level route: remembered as such
        for route in self._routes:
            path_format = getattr(route, "path_format", None)
            if getattr(route, "endpoint", None) is endpoint and isinstance(path_format, str):
                template = path_format
                break
        self._by_endpoint[id(endpoint)] = template
        return template


def _compiled_paths(
    routes: Sequence[BaseRoute],
) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
    """(path regex, template, methods or None for any) of every route, in the router's order,
    the routes of included routers too: FastAPI 0.165 keeps those nested, behind an object of
    its own, and `iter_route_contexts` is its way to walk them (the routes are flat before)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI: the routes are the list itself
        contexts: Iterable[object] = routes
    else:
        contexts = iter_route_contexts(routes)
    compiled = []
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str) and path.startswith("/"):
            regex, template, _ = compile_path(path)
            compiled.append((regex, template, None if methods is None else frozenset(methods)))
    return compiled


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
        self._refused = metrics.batches.counter(metrics.http_requests_refused)
        self._deferred = metrics.batches.counter(metrics.http_requests_deferred)

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
            method = scope["method"]
            if method not in METHODS:  # before the dict: random methods must not grow it
                method = OTHER_METHOD
            self.record(method, self._templates(scope), status, _clock() - started)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request's duration. Called by `__call__`, and directly by the fast lane, which
        knows its route and status and so needs no middleware layer around it."""
        key = (method, route, status)
        child = self._bound.get(key)
        if child is None:
            child = self._bind(key)
        child.observe(seconds)

    def refused(self) -> None:
        """One request refused by admission control; called by the outermost layer."""
        self._refused.inc()

    def deferred(self) -> None:
        """One request whose start the turn budget put off to a later turn of the loop."""
        self._deferred.inc()

    def _bind(self, key: tuple[str, str, int]) -> HistogramBatch:
        method, route, status = key
        metrics = self._metrics
        child = metrics.batches.histogram(
            metrics.http_request_seconds, LATENCY_BUCKETS, method, route, str(status)
        )
        self._bound[key] = child
        return child
