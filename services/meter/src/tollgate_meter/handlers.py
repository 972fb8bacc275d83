"""Kafka handlers: admit requests, settle usage."""

from __future__ import annotations

import logging

from opentelemetry import trace
from prometheus_client import Counter

from tollgate_core import topics
from tollgate_core.bus import Delivered, Publisher
from tollgate_core.contracts import AdmissionV1, ChatRequestV1, UsageRecordV1
from tollgate_meter.adapters.ledger import Ledger
from tollgate_meter.domain import estimate

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.meter")

DECISIONS = Counter("tollgate_meter_decisions_total", "Admission decisions", ["decision"])
SETTLED = Counter("tollgate_meter_settlements_total", "Usage records settled", ["result"])


class AdmissionHandler:
    def __init__(self, ledger: Ledger, publisher: Publisher, *, default_max_tokens: int) -> None:
        self._ledger = ledger
        self._publisher = publisher
        self._default_max_tokens = default_max_tokens

    async def __call__(self, delivered: Delivered[ChatRequestV1]) -> None:
        request = delivered.event
        with tracer.start_as_current_span(
            "meter.admit",
            attributes={
                "tollgate.request_id": request.request_id,
                "tollgate.principal": request.principal,
            },
        ) as span:
            est = estimate(request, default_max_tokens=self._default_max_tokens)
            new = await self._ledger.reserve(
                request.request_id, request.principal, request.model, est
            )
            span.set_attribute("tollgate.meter.redelivered", not new)
            # Published again on redelivery: the reservation may have been written by a run
            # that died before its admission reached Kafka. The router de-duplicates.
            await self._publisher.publish(
                topics.ADMITTED,
                AdmissionV1(
                    request=request,
                    reserved_input_tokens=est.input_tokens,
                    reserved_output_tokens=est.output_tokens,
                ),
                key=request.principal,
            )
            DECISIONS.labels("admitted").inc()


class SettlementHandler:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def __call__(self, delivered: Delivered[UsageRecordV1]) -> None:
        usage = delivered.event
        with tracer.start_as_current_span(
            "meter.settle", attributes={"tollgate.request_id": usage.request_id}
        ):
            settled = await self._ledger.settle(usage)
        SETTLED.labels("settled" if settled else "duplicate").inc()
