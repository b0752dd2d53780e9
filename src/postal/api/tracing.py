"""Request spans, when tracing is on (`POSTAL_TRACING`): the fast lane's and the app's.

One SERVER span per HTTP request, named `{method} {route template}` (`GET
/api/v1/posts/{post_id}`), with `http.request.method`, `url.path`, `http.route` and
`http.response.status_code`; a 5xx sets its status to error. The parent is what the request's
headers carry (W3C `traceparent` and `tracestate`, through the propagators `OTEL_PROPAGATORS`
names, tracecontext and baggage by default), else the span starts a trace. It is the current
span while the request is answered, so the cache's and the database's spans
(`observability/tracing.py`) and the log lines' trace ids hang from it.

Two entrances, as for the access log: `TracingMiddleware` for the requests that reach the app,
inside the request-id middleware; the fast lane (`api/fast_reads.py`) calls `RequestSpans.serve`
for its own. Off, neither exists and the fast lane tests one attribute for None.

Hand-written rather than opentelemetry-instrumentation-asgi: the fast lane answers before any
ASGI middleware could wrap it, so its span has to be made in it anyway; the contrib package is
a beta that would add two spans per response message (`http send`), which the cached read's
budget does not have room for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postal.api.http_metrics import FAILED_STATUS, RouteTemplates

# The headers a propagator may read; every other header stays out of the carrier.
PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})
Answered = tuple[int, int]  # the status sent, and the length of the body
MAX_HEADER = 8192  # bytes of one propagation header considered (W3C allows 512 for tracestate)


def carrier(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The propagation headers of a request, as the propagators read them."""
    found: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in PROPAGATED and len(value) <= MAX_HEADER:
            found[lowered.decode("ascii")] = value.decode("latin-1")
    return found


class RequestSpans:
    """Makes the request spans with `tracer`."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def serve(
        self, scope: Scope, template: str | None, answer: Callable[[], Awaitable[Answered]]
    ) -> Answered:
        """Run `answer` (which returns the status sent, and the body's length) inside the
        request's span. `template`: the route, when known before (the fast lane's); else the
        middleware names the span once the router has found it (`named`)."""
        method: str = scope["method"]
        parent = propagate.extract(carrier(scope["headers"]))
        with self._tracer.start_as_current_span(
            f"{method} {template}" if template else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
            record_exception=False,  # the error handlers log it; the span says its status
            set_status_on_exception=False,
        ) as span:
            status = FAILED_STATUS
            try:
                answered = await answer()
                status = answered[0]
            finally:
                if template:
                    span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            return answered

    def named(self, scope: Scope, template: str) -> None:
        """Give the current span its route, once the router has found it."""
        span = trace.get_current_span()
        span.update_name(f"{scope['method']} {template}")
        span.set_attribute("http.route", template)


class TracingMiddleware:
    """Request spans for the requests that reach the app (not the fast lane's)."""

    def __init__(self, app: ASGIApp, spans: RequestSpans, route_of: RouteTemplates) -> None:
        self.app = app
        self._spans = spans
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = FAILED_STATUS

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def answer() -> Answered:
            try:
                await self.app(scope, receive, send_and_see)
            finally:
                self._spans.named(scope, self._route_of(scope))
            return status, 0

        await self._spans.serve(scope, None, answer)
