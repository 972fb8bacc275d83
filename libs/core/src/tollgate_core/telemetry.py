"""Logging, tracing and metrics, set up once per process at its entrypoint."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from pythonjsonlogger.json import JsonFormatter

from tollgate_core.settings import TelemetrySettings

#: Histogram buckets (seconds) shared by every service that reports model latency, so the
#: router's and the analytics job's histograms can be compared and summed.
TIME_TO_FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
REQUEST_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class _TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


def configure_logging(settings: TelemetrySettings, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-5s {service} %(name)s: %(message)s")
        )
    handler.addFilter(_TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("aiokafka", "kafka", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@dataclass
class Telemetry:
    provider: TracerProvider

    def shutdown(self) -> None:
        self.provider.shutdown()


def configure_tracing(
    settings: TelemetrySettings, service: str, exporter: SpanExporter | None = None
) -> Telemetry:
    """Install the global tracer provider; spans are exported over OTLP when an endpoint is
    configured (see :class:`TelemetrySettings`), or to ``exporter`` when given."""
    resource = Resource.create(
        {
            "service.name": f"tollgate-{service}",
            "service.namespace": settings.otel_service_namespace,
        }
    )
    if exporter is None:
        exporter = otlp_exporter(settings)
    # with nowhere to send spans, none is recorded (their attributes, events and links cost
    # about 5 % of a service's CPU under load); each still has its ids, which the logs and
    # the propagated traceparent carry
    if exporter is None:
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    else:  # the default sampler: follow the caller's decision, sample a new trace
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return Telemetry(provider)


def otlp_exporter(settings: TelemetrySettings) -> SpanExporter | None:
    """The OTLP span exporter the settings ask for, or None when no endpoint is set."""
    protocol = settings.otel_exporter_otlp_traces_protocol or settings.otel_exporter_otlp_protocol
    endpoint = settings.otel_exporter_otlp_traces_endpoint
    if protocol == "grpc":
        endpoint = endpoint or settings.otel_exporter_otlp_endpoint
        if endpoint is None:
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint)
    if endpoint is None and settings.otel_exporter_otlp_endpoint:
        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    if endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint)


def setup(settings: TelemetrySettings, service: str) -> Telemetry:
    configure_logging(settings, service)
    return configure_tracing(settings, service)
