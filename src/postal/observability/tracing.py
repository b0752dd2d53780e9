"""Tracing, opt-in (`POSTAL_TRACING`): the SDK set up from `OTEL_*`, and cache and SQL spans.

Off (the default), none of this runs and no tracer provider is set up (the SDK not imported):
the request layers are not built, no listener is subscribed, the near cache is the plain one
and log lines carry no trace ids. On, `provider_from_environment` builds the SDK's tracer
provider as the SDK reads the environment: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
(the resource; `service.name` is `postal` unless they name one), `OTEL_TRACES_SAMPLER` and its
argument, the batch processor's `OTEL_BSP_*`, `OTEL_SDK_DISABLED`, and `OTEL_TRACES_EXPORTER`
(default `otlp`; `console`, `none`, or any exporter installed under the SDK's
`opentelemetry_traces_exporter` entry points), each exporter reading its own variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `_HEADERS`, ...). `otlp` is the OTLP exporter over
HTTP/protobuf, the protocol the `tracing` extra installs and the specification's default; a
`grpc` protocol needs that exporter installed too. The SDK's own start-up from the environment
(`opentelemetry-instrument`, the distro) is not used: it lives in private modules, and it would
also turn on every installed auto-instrumentation, FastAPI's among them, which the fast lane
bypasses anyway.

The spans made here, each only as the child of a request's span (in the request, or in a task
it started, such as a background fill): so background work outside any request (invalidation
retries, heartbeats, migrations) makes none.

- `RedisSpans`, a cache listener: one span per Redis operation (`redis GET`, `redis PIPELINE`,
  ...), with its node as `server.address`/`server.port`, role and outcome. The transport
  reports an operation once it has ended, with its duration: the span is given those times.
- `TracedNearCache`: the near cache, with a `near_cache.hit` or `near_cache.miss` event on the
  current span for each lookup. A subclass chosen at start-up, so tracing off costs the near
  cache nothing (a hook inside it would be one more test on every hit).
- `SqlSpans`: a span per SQL statement, from SQLAlchemy's cursor events on the engine, with
  the statement's text (bound parameters are placeholders: no values reach the span).
- `TraceIdFilter`: `trace_id` and `span_id` on every log record written inside a span.

The request spans are the API's (`api/tracing.py`): the fast lane and a middleware make them,
honouring an incoming W3C `traceparent` through the propagators `OTEL_PROPAGATORS` names.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from postal.cache import CacheEvent, Guarded, NearCache

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy.ext.asyncio import AsyncEngine

INSTRUMENTATION = "postal"
DEFAULT_SERVICE_NAME = "postal"
EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the SDK's entry points for span exporters
# OTEL_TRACES_EXPORTER's `otlp`, by OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: the entry point names
# the OTLP exporters register themselves under.
OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_ERROR_OUTCOMES = frozenset({"timeout", "pool_timeout", "connection_error", "error"})
MAX_STATEMENT = 2048  # characters of an SQL statement kept on its span


class TracingUnavailable(RuntimeError):
    """POSTAL_TRACING is on, but the SDK is not installed or the environment names an exporter
    that is not."""


def provider_from_environment(version: str) -> TracerProvider:
    """The SDK's tracer provider as the `OTEL_*` environment describes it, with a batch
    processor per exporter; not set as the global one (`install_provider` does that)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            "POSTAL_TRACING is on but the OpenTelemetry SDK is not installed:"
            " install postal[tracing]"
        ) from exc
    resource = Resource.create({SERVICE_VERSION: version})  # + OTEL_RESOURCE_ATTRIBUTES, _NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # reads OTEL_TRACES_SAMPLER(_ARG) itself
    for exporter in exporters_from_environment():
        provider.add_span_processor(BatchSpanProcessor(exporter))  # reads OTEL_BSP_*
    return provider


def exporters_from_environment() -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (comma-separated; default `otlp`)."""
    names = [
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    if "none" in names:
        return []
    installed = {point.name: point for point in entry_points(group=EXPORTER_GROUP)}
    exporters = []
    for name in names:
        entry_name = name
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            entry_name = OTLP_BY_PROTOCOL.get(protocol.strip().lower(), "")
        point = installed.get(entry_name)
        if point is None:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed here"
                f" (installed: {', '.join(sorted(installed)) or 'none'}, otlp, none)"
            )
        exporters.append(point.load()())
    return exporters


def install_provider(provider: TracerProvider) -> None:
    """Make `provider` the process's global one, for any other library that traces."""
    trace.set_tracer_provider(provider)


def tracer_of(provider: trace.TracerProvider) -> Tracer:
    from postal import __version__

    return provider.get_tracer(INSTRUMENTATION, __version__)


def _in_a_trace() -> bool:
    """Whether the current context has a span: a request's, or the one a task it started (a
    background fill) inherited, which may have ended by the time the fill runs."""
    return trace.get_current_span().get_span_context().is_valid


class RedisSpans:
    """A cache listener: one span per Redis operation made in a request's trace."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def __call__(self, event: CacheEvent) -> None:
        if not _in_a_trace():
            return
        ended = time.time_ns()
        attributes: dict[str, Any] = {
            "db.system.name": "redis",
            "db.operation.name": event.command,
            "postal.cache.role": event.role,
            "postal.cache.outcome": str(event.outcome),
        }
        if event.node:
            host, _, port = event.node.rpartition(":")
            attributes["server.address"] = host.strip("[]") or event.node
            if port.isdigit():
                attributes["server.port"] = int(port)
        span = self._tracer.start_span(
            f"redis {event.command}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=ended - int(event.duration * 1e9),
        )
        if event.outcome in _ERROR_OUTCOMES or event.outcome == "circuit_open":
            span.set_attribute("error.type", str(event.outcome))
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end(end_time=ended)


class TracedNearCache(NearCache):
    """The near cache, marking each lookup on the current span (see the module)."""

    def get(self, key: str) -> Guarded | None:
        found = super().get(key)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("near_cache.hit" if found is not None else "near_cache.miss")
        return found


class SqlSpans:
    """A span per SQL statement run in a request's trace, from SQLAlchemy's cursor events."""

    def __init__(self, tracer: Tracer, engine: AsyncEngine) -> None:
        self._tracer = tracer
        url = engine.url
        self._attributes: dict[str, Any] = {"db.system.name": _db_system(url.get_backend_name())}
        if url.database:
            self._attributes["db.namespace"] = url.database
        if url.host:
            self._attributes["server.address"] = url.host
        if url.port:
            self._attributes["server.port"] = url.port
        # Execution contexts live for one statement: spans keyed weakly, so a statement that
        # neither finishes nor fails (its task cancelled) leaves nothing behind.
        self._spans: weakref.WeakKeyDictionary[Any, trace.Span] = weakref.WeakKeyDictionary()

    def attach(self, engine: AsyncEngine) -> None:
        from sqlalchemy import event

        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)
        event.listen(sync, "handle_error", self._failed)

    def _before(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if context is None or not _in_a_trace():
            return
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        attributes = dict(self._attributes)
        attributes["db.operation.name"] = operation
        attributes["db.query.text"] = statement[:MAX_STATEMENT]
        self._spans[context] = self._tracer.start_span(
            f"{operation} {attributes['db.system.name']}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    def _after(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        span = self._spans.pop(context, None) if context is not None else None
        if span is not None:
            span.end()

    def _failed(self, exception_context: Any) -> None:
        context = exception_context.execution_context
        span = self._spans.pop(context, None) if context is not None else None
        if span is not None:
            error = exception_context.original_exception
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
            span.end()


def _db_system(backend: str) -> str:
    return "postgresql" if backend.startswith("postgres") else backend


class TraceIdFilter(logging.Filter):
    """Puts the current span's `trace_id` and `span_id` (hex, as W3C writes them) on a record
    written inside one; `configure_logging` adds it to the handler only when tracing is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
