"""Kafka handlers: admit (or refuse) requests, settle usage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from opentelemetry import trace
from prometheus_client import Counter, Histogram

from tollgate_core import topics
from tollgate_core.bus import Delivered, Publisher
from tollgate_core.contracts import (
    AnyRequest,
    ErrorInfo,
    ReplyErrorV1,
    RequestLogV1,
    UsageRecordV1,
    utcnow,
)
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_core.health import Health
from tollgate_core.limits import Limits, count_bad_input
from tollgate_meter.batching import AdmissionBatcher
from tollgate_meter.domain import (
    OutputLimit,
    admission_of,
    estimate,
    validate_request,
    validate_usage,
)
from tollgate_meter.ports import AdmissionRequest, Settlements

#: a request older than this when Postgres is out was not just sent: it is not refused as
#: "metering unavailable" but retried until Postgres answers (see AdmissionHandler)
REREAD_AFTER = timedelta(seconds=2)

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.meter")

DECISIONS = Counter("tollgate_meter_decisions_total", "Admission decisions", ["decision"])
REJECTIONS = Counter(
    "tollgate_meter_rejections_total", "Requests refused by a window", ["window", "limit_type"]
)
SETTLED = Counter("tollgate_meter_settlements_total", "Usage records settled", ["result"])
DECISION_SECONDS = Histogram(
    "tollgate_meter_decision_seconds",
    "Time to decide an admission",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)

Clock = Callable[[], datetime]
#: a model's output limit as the router's catalog says (None: not known)
OutputLimits = Callable[[str | None], OutputLimit | None]


def _unknown(_: str | None) -> OutputLimit | None:
    return None


class AdmissionHandler:
    def __init__(
        self,
        batcher: AdmissionBatcher,
        publisher: Publisher,
        health: Health,
        *,
        default_max_tokens: int,
        fail_open: bool,
        limits: Limits | None = None,
        output_limits: OutputLimits | None = None,
        reservation_ttl_s: float | None = None,
    ) -> None:
        self._ttl = None if reservation_ttl_s is None else timedelta(seconds=reservation_ttl_s)
        self._batcher = batcher
        self._output_limits = output_limits or _unknown
        self._limits = limits or Limits()
        self._publisher = publisher
        self._health = health
        self._default_max_tokens = default_max_tokens
        self._fail_open = fail_open

    async def __call__(self, delivered: Delivered[AnyRequest]) -> None:
        request = delivered.event
        with tracer.start_as_current_span(
            "meter.admit",
            attributes={
                "tollgate.request_id": request.request_id,
                "tollgate.principal": request.principal,
            },
        ) as span:
            with DECISION_SECONDS.time():
                try:
                    validate_request(request, self._limits)
                    est = estimate(
                        request,
                        default_max_tokens=self._default_max_tokens,
                        output_limit=self._output_limits(request.model),
                    )
                    decision = await self._batcher.admit(
                        request.principal,
                        AdmissionRequest(
                            request.request_id,
                            request.model,
                            request.groups,
                            est,
                            tier=request.tier,
                        ),
                    )
                except RequestError as exc:  # bad input, never an outage: nothing was written
                    await self._bad_request(request, exc)
                    return
                except DependencyUnavailable as exc:
                    self._health.fail("postgres", exc.message)
                    if utcnow() - request.created_at > REREAD_AFTER:
                        # queued, or read again after a meter died having decided it: it
                        # waits for Postgres (the consumer retries), so a request admitted
                        # and answered is never refused afterwards
                        raise
                    await self._unavailable(request, exc, est.input_tokens, est.output_tokens)
                    return
            self._health.ok("postgres")
            span.set_attribute("tollgate.meter.tier", decision.tier)
            span.set_attribute("tollgate.meter.repeated", decision.repeated)
            if decision.violation is None:
                DECISIONS.labels("admitted").inc()
                await self._admit(request, est.input_tokens, est.output_tokens, reserved=True)
                return
            violation = decision.violation
            DECISIONS.labels("rejected").inc()
            REJECTIONS.labels(violation.window, violation.dimension).inc()
            span.set_attribute("tollgate.meter.rejected_by", violation.window)
            await self._refuse(
                request,
                ErrorInfo(
                    type="token_limit_exceeded",
                    message=violation.message(),
                    retriable=violation.retry_after_s is not None,
                    details={**violation.details(), "tier": decision.tier},
                ),
            )

    async def _admit(
        self,
        request: AnyRequest,
        reserved_in: int,
        reserved_out: int,
        *,
        reserved: bool,
    ) -> None:
        """Hand the request to the router with what was reserved and, when a reservation
        was made, when the sweeper may release it at the earliest: TTL after the request was
        created, which is never later than its reservation was written (also for a
        redelivered request, whose reservation is older than this publication).

        Published again on redelivery: the decision may have been written by a run that
        died before its admission reached Kafka. The router de-duplicates."""
        expires = None
        if reserved and self._ttl is not None:
            expires = request.created_at + self._ttl
        await self._publisher.publish(
            topics.ADMITTED,
            admission_of(request, reserved_in, reserved_out, expires_at=expires),
            key=request.principal,
        )

    async def _unavailable(
        self,
        request: AnyRequest,
        exc: DependencyUnavailable,
        est_in: int,
        est_out: int,
    ) -> None:
        if self._fail_open:
            DECISIONS.labels("admitted_fail_open").inc()
            logger.warning(
                "admitting %s without a reservation: %s", request.request_id, exc.message
            )
            await self._admit(request, est_in, est_out, reserved=False)
            return
        DECISIONS.labels("unavailable").inc()
        logger.warning("refusing %s: %s", request.request_id, exc.message)
        await self._refuse(
            request,
            ErrorInfo(
                type="service_unavailable",
                retriable=True,
                message="token metering is unavailable; the request was not run",
                details={"retry_after_s": 5},
            ),
        )

    async def _bad_request(self, request: AnyRequest, exc: RequestError) -> None:
        DECISIONS.labels("invalid").inc()
        count_bad_input("meter.admission", exc.details.get("field"))
        logger.info("refusing %s as invalid: %s", request.request_id, exc.message)
        await self._refuse(
            request,
            ErrorInfo(type=exc.error_type, message=exc.message, details=dict(exc.details)),
        )

    async def _refuse(self, request: AnyRequest, error: ErrorInfo) -> None:
        await self._publisher.publish(
            request.reply_to.topic,
            ReplyErrorV1.answering(request, seq=0, model=request.model, error=error),
            key=request.request_id,
            partition=request.reply_to.partition,
        )
        await self._publisher.publish(
            topics.LOGS,
            RequestLogV1.of_request(
                request,
                model=request.model or "default",
                provider="none",
                status="rejected",
                error_type=error.type,
            ),
            key=request.principal,
        )


class SettlementHandler:
    def __init__(self, ledger: Settlements, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    async def __call__(self, delivered: Delivered[UsageRecordV1]) -> None:
        usage = delivered.event
        with tracer.start_as_current_span(
            "meter.settle", attributes={"tollgate.request_id": usage.request_id}
        ):
            # Postgres trouble raises DependencyUnavailable: the consumer retries, nothing is
            # lost. A record the ledger cannot store raises RequestError: it is dead-lettered
            # (not retried for ever, which would hold back its partition)
            try:
                validate_usage(usage)
                settled = await self._ledger.settle(usage, self._clock())
            except RequestError as exc:
                count_bad_input("meter.settlement", exc.details.get("field"))
                raise
        SETTLED.labels("settled" if settled else "duplicate").inc()
