"""The tracer provider as the OTEL_* environment describes it, and trace ids on log lines only
when tracing is on."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from postal import __version__
from postal.observability.logging import configure_logging
from postal.observability.tracing import (
    TraceIdFilter,
    TracingUnavailable,
    exporters_from_environment,
    provider_from_environment,
    tracer_of,
)


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)


def test_otlp_over_http_by_default() -> None:
    (exporter,) = exporters_from_environment()
    assert isinstance(exporter, OTLPSpanExporter)


def test_the_exporters_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, otlp")
    kinds = [type(exporter) for exporter in exporters_from_environment()]
    assert kinds == [ConsoleSpanExporter, OTLPSpanExporter]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert exporters_from_environment() == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "jaeger"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
)
def test_an_exporter_not_installed_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(TracingUnavailable, match="not installed here"):
        exporters_from_environment()


def test_the_resource_and_sampler_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    provider = provider_from_environment(__version__)
    assert provider.resource.attributes[SERVICE_NAME] == "postal"
    assert provider.resource.attributes[SERVICE_VERSION] == __version__
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "posts-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = provider_from_environment(__version__)
    assert provider.resource.attributes[SERVICE_NAME] == "posts-eu"
    with tracer_of(provider).start_as_current_span("unsampled") as span:
        assert not span.is_recording()
    provider.shutdown()


@pytest.mark.parametrize("on", [True, False])
def test_trace_ids_on_log_lines_only_when_on(on: bool) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    provider = TracerProvider()
    try:
        configure_logging("INFO", "json", stream=stream, trace_ids=on)
        filters = root.handlers[0].filters
        assert any(isinstance(f, TraceIdFilter) for f in filters) is on
        with tracer_of(provider).start_as_current_span("request") as span:
            logging.getLogger("postal.test").warning("inside")
        logging.getLogger("postal.test").warning("outside")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        provider.shutdown()
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    if on:
        assert inside["trace_id"] == format(context.trace_id, "032x")
        assert inside["span_id"] == format(context.span_id, "016x")
    else:
        assert "trace_id" not in inside
    assert "trace_id" not in outside
