"""The Faust application: consumes ``tollgate.logs``."""

from __future__ import annotations

import logging
from typing import Any

import faust
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from tollgate_analytics import metrics
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core import topics
from tollgate_core.bus import Decoder
from tollgate_core.bus import headers as h
from tollgate_core.contracts import RequestLogV1
from tollgate_core.errors import ContractError

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.analytics")

DEAD_LETTERED = Counter(
    "tollgate_analytics_dead_lettered_total", "Malformed log records", ["reason"]
)


def create_app(settings: AnalyticsSettings) -> faust.App:
    kafka = settings.kafka
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        store="memory://",
        web_host=settings.host,
        web_port=settings.port,
        web_bind=settings.host,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    logs_topic = app.topic(topics.LOGS, value_serializer="raw", key_serializer="raw")
    dead_letter = app.topic(topics.DEAD_LETTER, value_serializer="raw", key_serializer="raw")
    decoder: Decoder[RequestLogV1] = Decoder.of(RequestLogV1)

    @app.agent(logs_topic)
    async def request_logs(stream: Any) -> None:
        async for event in stream.events():
            raw_headers = list((event.headers or {}).items())
            headers = h.to_dict(raw_headers)
            try:
                record = decoder.decode(event.value, headers.get(h.SCHEMA))
            except ContractError as exc:
                DEAD_LETTERED.labels(type(exc).__name__).inc()
                logger.warning("dead-lettering a log record: %s", exc.message)
                await dead_letter.send(
                    key=event.key,
                    value=event.value,
                    headers=[
                        *raw_headers,
                        (h.DLQ_REASON, exc.message.encode()),
                        (h.DLQ_TOPIC, topics.LOGS.encode()),
                    ],
                )
                continue
            with tracer.start_as_current_span(
                f"{topics.LOGS} process",
                context=h.extract_trace(headers),
                kind=SpanKind.CONSUMER,
                attributes={"tollgate.request_id": record.request_id},
            ):
                metrics.observe(record)

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready = bool(app.consumer and app.consumer.assignment())
        return self.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app
