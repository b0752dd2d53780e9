"""Tracing (`POSTAL_TRACING`): the spans an in-memory exporter receives for a cached read (from
the near cache and from Redis), a miss and a write, against real Redis and PostgreSQL; a
`traceparent` honoured; a 5xx marked; trace ids in the log lines; and, off, no spans and no
provider."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from postal.cache import NearCache
from postal.observability.logging import JsonFormatter
from postal.observability.tracing import TraceIdFilter
from tests.integration.api_support import AUTH, Api, running_api
from tests.integration.helpers import eventually

ROUTE = "/api/v1/posts/{post_id}"


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def request_span(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    (found,) = [span for span in spans if span.kind is SpanKind.SERVER]
    return found


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def redis_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get("db.system.name") == "redis"]


def sql_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get("db.system.name") == "postgresql"]


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def read(api: Api, exporter: InMemorySpanExporter, path: str) -> list[ReadableSpan]:
    """The spans of one GET of `path`, its background fill included."""
    await api.settle()
    exporter.clear()
    assert (await api.client.get(path)).status_code == 200
    await api.settle()
    return list(exporter.get_finished_spans())


async def test_spans_of_a_miss_a_redis_hit_a_near_cache_hit_and_a_write(
    clean_database: str,
    redis_url: str,
    key_prefix: str,
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    async with running_api(
        clean_database, redis_url, key_prefix, tracer_provider=provider, POSTAL_TRACING="true"
    ) as api:
        await eventually(api.state.near.usable)
        post = await api.create(title="traced")
        path = f"/api/v1/posts/{post['id']}"

        miss = await read(api, exporter, path)
        hit = await read(api, exporter, path)  # from Redis, then held in memory
        near_hit = await read(api, exporter, path)

        exporter.clear()
        changed = await api.client.put(
            path, json={"title": "again", "body": "b", "author": "a"}, headers=AUTH
        )
        assert changed.status_code == 200
        write = list(exporter.get_finished_spans())

    # A miss: the request (the fast lane's), the near cache's miss, Redis's GET that missed,
    # the SELECT, and the fill, all in the request's trace.
    request = request_span(miss)
    assert request.name == f"GET {ROUTE}"
    assert request.attributes is not None
    assert request.attributes["http.route"] == ROUTE
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["url.path"] == path
    assert event_names(request) == ["near_cache.miss"]
    assert {span.context.trace_id for span in miss if span.context} == {request.context.trace_id}
    (get,) = [s for s in redis_spans(miss) if s.name == "redis GET"]
    assert get.attributes is not None
    assert get.attributes["postal.cache.outcome"] == "miss"
    assert get.attributes["server.address"] == host
    assert get.attributes["server.port"] == int(port)
    assert get.attributes["postal.cache.role"] == "read"
    assert get.kind is SpanKind.CLIENT
    assert "redis EVALSHA" in [s.name for s in redis_spans(miss)]  # the guarded fill
    selects = [s for s in sql_spans(miss) if s.name == "SELECT postgresql"]
    assert selects, [s.name for s in miss]
    assert all(s.parent is not None for s in sql_spans(miss))
    assert "posts" in str(selects[0].attributes["db.query.text"])  # type: ignore[index]
    assert selects[0].attributes["db.namespace"]  # type: ignore[index]
    assert get in children(miss, request)

    # A hit in Redis: one GET that hit, no SQL.
    request = request_span(hit)
    assert event_names(request) == ["near_cache.miss"]
    assert [s.attributes["postal.cache.outcome"] for s in redis_spans(hit)] == ["hit"]  # type: ignore[index]
    assert sql_spans(hit) == []

    # A hit in this process's memory: the request span alone, marked.
    assert [s.kind for s in near_hit] == [SpanKind.SERVER]
    assert event_names(near_hit[0]) == ["near_cache.hit"]

    # A write: the request (through the app, named by its route once routed), its SQL, and the
    # invalidation's pipeline on the write role.
    request = request_span(write)
    assert request.name == f"PUT {ROUTE}"
    assert request.attributes is not None
    assert request.attributes["http.route"] == ROUTE
    assert request.attributes["http.request.method"] == "PUT"
    assert {s.name for s in sql_spans(write)} >= {"UPDATE postgresql", "INSERT postgresql"}
    (pipeline,) = [s for s in redis_spans(write) if s.name == "redis PIPELINE"]
    assert pipeline.attributes is not None
    assert pipeline.attributes["postal.cache.role"] == "write"
    assert pipeline.attributes["server.port"] == int(port)
    assert all(s.context.trace_id == request.context.trace_id for s in write if s.context)


async def test_an_incoming_traceparent_is_the_parent(
    clean_database: str,
    redis_url: str,
    key_prefix: str,
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    async with running_api(
        clean_database, redis_url, key_prefix, tracer_provider=provider, POSTAL_TRACING="true"
    ) as api:
        post = await api.create()
        exporter.clear()
        await api.client.get(f"/api/v1/posts/{post['id']}", headers=traceparent)  # fast lane
        await api.client.get("/api/v1/posts?limit=1", headers=traceparent)  # the app
        await api.client.get("/api/v1/posts?limit=1", headers={"traceparent": "00-junk"})
        await api.settle()
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == [f"GET {ROUTE}", "GET /api/v1/posts", "GET /api/v1/posts"]
    for span in servers[:2]:
        assert span.context is not None
        assert span.parent is not None
        assert format(span.context.trace_id, "032x") == trace_id
        assert format(span.parent.span_id, "016x") == parent_id
        assert span.parent.is_remote
    assert servers[2].parent is None  # a malformed header starts a trace of its own


async def test_a_server_error_marks_the_span_and_log_lines_carry_its_trace_id(
    clean_database: str,
    redis_url: str,
    key_prefix: str,
    exported: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = exported

    async def broken(post_id: int) -> None:
        raise RuntimeError("broken on purpose")

    async with running_api(
        clean_database,
        redis_url,
        key_prefix,
        tracer_provider=provider,
        POSTAL_TRACING="true",
        POSTAL_ACCESS_LOG="true",
    ) as api:
        # What `configure_logging(trace_ids=True)` puts on Postal's handler (a unit test checks
        # it does), on the handler the test reads.
        caplog.handler.addFilter(TraceIdFilter())
        api.state.posts.read_post = broken  # every read of one post now fails
        exporter.clear()
        caplog.clear()
        assert (await api.client.get("/api/v1/posts/1")).status_code == 500  # the fast lane's
        assert (await api.client.get("/api/v1/posts?limit=1")).status_code == 200
    failed, listed = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["http.response.status_code"] == 500
    assert listed.status.status_code is StatusCode.UNSET
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    error_lines = [line for line in lines if line["logger"] == "postal.api"]
    access_lines = [line for line in lines if line["logger"] == "postal.access"]
    assert failed.context is not None
    assert listed.context is not None
    assert [line["trace_id"] for line in error_lines] == [format(failed.context.trace_id, "032x")]
    assert error_lines[0]["span_id"] == format(failed.context.span_id, "016x")
    # The app's access line is written inside its span; the fast lane's after its span ended.
    assert [line.get("trace_id") for line in access_lines] == [
        None,
        format(listed.context.trace_id, "032x"),
    ]


async def test_off_by_default_no_spans_and_no_provider(
    clean_database: str,
    redis_url: str,
    key_prefix: str,
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    async with running_api(clean_database, redis_url, key_prefix, tracer_provider=provider) as api:
        post = await api.create()
        for _ in range(3):
            assert (await api.client.get(f"/api/v1/posts/{post['id']}")).status_code == 200
        await api.client.get("/api/v1/posts?limit=1")
        await api.settle()
        assert api.app.tracing is None  # no layer, and the fast lane skips it
        assert type(api.state.near) is NearCache  # not the traced one
    assert exporter.get_finished_spans() == ()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
