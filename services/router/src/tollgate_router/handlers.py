"""Turns an admission into a streamed answer: replies, one usage record, one log record."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from tollgate_core import topics
from tollgate_core.bus import Delivered, Publisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatRequestV1,
    ErrorInfo,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    RequestLogV1,
    Usage,
    UsageRecordV1,
    utcnow,
)
from tollgate_router.providers.base import Finished, Provider, ProviderRequest, TextDelta

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.router")

REQUESTS = Counter("tollgate_router_requests_total", "Requests by outcome", ["model", "status"])
TOKENS = Counter("tollgate_router_tokens_total", "Tokens", ["model", "direction"])
TTFT = Histogram(
    "tollgate_router_time_to_first_token_seconds",
    "Time to first token",
    ["model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
LATENCY = Histogram(
    "tollgate_router_request_seconds",
    "Total request latency",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


class GenerationHandler:
    def __init__(
        self, providers: Mapping[str, Provider], publisher: Publisher, *, default_model: str
    ) -> None:
        self._providers = providers
        self._publisher = publisher
        self._default_model = default_model

    async def __call__(self, delivered: Delivered[AdmissionV1]) -> None:
        request = delivered.event.request
        model = request.model or self._default_model
        started_at = utcnow()
        t0 = time.perf_counter()
        with tracer.start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "tollgate.request_id": request.request_id,
            },
        ) as span:
            provider = self._providers.get(model)
            if provider is None:
                error = ErrorInfo(type="model_not_found", message=f"unknown model {model!r}")
                await self._reply(request, ReplyErrorV1, seq=0, model=model, error=error)
                await self._finish(
                    request, model, "none", "error", Usage(), started_at, t0, error_type=error.type
                )
                span.set_status(Status(StatusCode.ERROR, error.message))
                return
            span.set_attribute("gen_ai.system", provider.name)
            seq = 0
            ttft_ms: int | None = None
            usage = Usage()
            stop_reason = "end_turn"
            provider_request = ProviderRequest(
                model=model,
                messages=request.messages,
                system=request.system,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
            )
            async for event in provider.stream(provider_request):
                if isinstance(event, TextDelta):
                    if ttft_ms is None:
                        ttft_ms = int((time.perf_counter() - t0) * 1000)
                        TTFT.labels(model).observe(ttft_ms / 1000)
                    await self._reply(request, ReplyChunkV1, seq=seq, model=model, text=event.text)
                    seq += 1
                elif isinstance(event, Finished):
                    usage = event.usage
                    stop_reason = event.stop_reason
            latency_ms = int((time.perf_counter() - t0) * 1000)
            await self._reply(
                request,
                ReplyDoneV1,
                seq=seq,
                model=model,
                usage=usage,
                stop_reason=stop_reason,
                latency_ms=latency_ms,
            )
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
            await self._finish(
                request, model, provider.name, "ok", usage, started_at, t0, ttft_ms=ttft_ms
            )

    async def _reply(
        self,
        request: ChatRequestV1,
        kind: type[ReplyChunkV1 | ReplyDoneV1 | ReplyErrorV1],
        *,
        seq: int,
        model: str,
        **fields: object,
    ) -> None:
        event = kind(
            request_id=request.request_id,
            principal=request.principal,
            seq=seq,
            channel=request.channel,
            conversation_id=request.conversation_id,
            model=model,
            **fields,
        )
        await self._publisher.publish(
            request.reply_to.topic,
            event,
            key=request.request_id,
            partition=request.reply_to.partition,
        )

    async def _finish(
        self,
        request: ChatRequestV1,
        model: str,
        provider: str,
        status: str,
        usage: Usage,
        started_at: datetime,
        t0: float,
        *,
        ttft_ms: int | None = None,
        error_type: str | None = None,
    ) -> None:
        latency_ms = int((time.perf_counter() - t0) * 1000)
        REQUESTS.labels(model, status).inc()
        TOKENS.labels(model, "input").inc(usage.input_tokens)
        TOKENS.labels(model, "output").inc(usage.output_tokens)
        LATENCY.labels(model).observe(latency_ms / 1000)
        await self._publisher.publish(
            topics.USAGE,
            UsageRecordV1(
                request_id=request.request_id,
                principal=request.principal,
                model=model,
                provider=provider,
                usage=usage,
                status="ok" if status == "ok" else "error",
            ),
            key=request.principal,
        )
        await self._publisher.publish(
            topics.LOGS,
            RequestLogV1(
                request_id=request.request_id,
                principal=request.principal,
                groups=request.groups,
                model=model,
                provider=provider,
                status="ok" if status == "ok" else "error",
                error_type=error_type,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                time_to_first_token_ms=ttft_ms,
                latency_ms=latency_ms,
                conversation_id=request.conversation_id,
                protocol=request.protocol,
                started_at=started_at,
            ),
            key=request.principal,
        )
