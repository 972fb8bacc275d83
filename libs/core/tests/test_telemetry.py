"""Trace export as the standard OTEL_EXPORTER_OTLP_* variables say."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

from tollgate_core.settings import TelemetrySettings
from tollgate_core.telemetry import otlp_exporter


def exporter_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for key in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return otlp_exporter(TelemetrySettings())


def test_no_endpoint_no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    assert exporter_for(monkeypatch) is None
    assert exporter_for(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc") is None


def test_http_appends_the_signal_path_to_the_generic_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = exporter_for(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4318/")
    assert isinstance(exporter, Http) and exporter._endpoint == "http://jaeger:4318/v1/traces"
    exporter = exporter_for(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://ignored:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://collector:4318/custom/traces",
    )
    assert exporter._endpoint == "http://collector:4318/custom/traces"


def test_grpc_when_the_protocol_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = exporter_for(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4317",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    assert isinstance(exporter, Grpc)
    exporter.shutdown()
    exporter = exporter_for(
        monkeypatch,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://jaeger:4317",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
    )
    assert isinstance(exporter, Grpc)
    exporter.shutdown()


def test_without_an_exporter_spans_keep_their_ids_but_record_nothing() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tollgate_core.telemetry import configure_tracing

    quiet = configure_tracing(TelemetrySettings(), "test").provider.get_tracer("t")
    span = quiet.start_span("work")
    assert not span.is_recording() and span.get_span_context().is_valid
    exported = configure_tracing(TelemetrySettings(), "test", InMemorySpanExporter())
    assert exported.provider.get_tracer("t").start_span("work").is_recording()
