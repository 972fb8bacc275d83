"""Turns an admission into a streamed answer: replies, one usage record, one log record.

Per request: claim it in the journal (a redelivery of a finished or interrupted request is
settled from the journal, never served twice) → resolve the model in the catalog → a live
prepared response, if any, is streamed at no provider cost → otherwise the resilient router
streams from the model or its fallbacks → text is coalesced into reply chunks → the usage and
log records are written to the journal, published, and the request marked settled. The router
holds no client connection, so a client that went away never cuts a provider stream short:
it is always drained until its usage arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from pydantic import TypeAdapter

from tollgate_core import topics
from tollgate_core.bus import Delivered, Publisher
from tollgate_core.contracts import (
    AdmissionV1,
    AdmissionV2,
    ChatRequestV1,
    ChatRequestV2,
    ErrorInfo,
    ImageContent,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyV1,
    RequestLogV1,
    ToolCallDelta,
    ToolResultContent,
    ToolUseContent,
    Usage,
    UsageRecordV1,
    utcnow,
)
from tollgate_core.errors import TollgateError
from tollgate_core.telemetry import REQUEST_LATENCY_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS
from tollgate_router import genai
from tollgate_router.catalog import CatalogSource, ModelSpec
from tollgate_router.errors import (
    ModelNotAllowed,
    ModelNotFound,
    ProviderError,
    RequestExpired,
    RequestInProgress,
)
from tollgate_router.journal import Claim, InMemoryJournal, RequestJournal
from tollgate_router.prepared import PreparedStore, prepared_key
from tollgate_router.providers.base import (
    Finished,
    Provider,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
)
from tollgate_router.providers.local import count_tokens
from tollgate_router.resilience import Outcome, ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.streaming import ChunkWriter, Coalescing

Reply = TypeVar("Reply", ReplyChunkV1, ReplyChunkV2, ReplyDoneV1, ReplyErrorV1)
#: a stored terminal reply, told apart by its own ``kind``
_REPLY: TypeAdapter[ReplyChunkV1 | ReplyDoneV1 | ReplyErrorV1] = TypeAdapter(ReplyV1)

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.router")

#: seq of the error that ends a stream interrupted by a dead router: beyond any chunk seq
TERMINAL_SEQ = 2**31 - 1

REQUESTS = Counter("tollgate_router_requests_total", "Requests by outcome", ["model", "status"])
TOKENS = Counter("tollgate_router_tokens_total", "Tokens", ["model", "direction"])
CACHE_HITS = Counter("tollgate_router_cache_hits_total", "Prepared-response hits", ["model"])
RETRIES = Counter("tollgate_router_retries_total", "Provider retries", ["model"])
FALLBACKS = Counter("tollgate_router_fallbacks_total", "Requests served by a fallback", ["model"])
REDELIVERED = Counter(
    "tollgate_router_redelivered_total", "Admissions seen again, by journal state", ["state"]
)
TTFT = Histogram(
    "tollgate_router_time_to_first_token_seconds",
    "Time to first token",
    ["model"],
    buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
)
LATENCY = Histogram(
    "tollgate_router_request_seconds",
    "Total request latency",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)


class _Stream:
    """Reply publishing for one request: seq numbering and chunk coalescing. A v2 request's
    chunks are v2 (text or tool-call deltas); a v1 request's stay v1, for older edges. A tool
    call's first piece (its id and name) goes out at once, its argument pieces coalesced as
    text is."""

    def __init__(
        self, handler: GenerationHandler, request: ChatRequestV2, model: str, *, v2: bool
    ) -> None:
        self.handler = handler
        self.request = request
        self.model = model
        self.seq = 0
        self.v2 = v2
        self.writer = ChunkWriter(self._chunk, handler.coalescing)
        self._call: ToolCallDelta | None = None
        self._arguments = ChunkWriter(self._call_arguments, handler.coalescing)
        self._block_offset: int | None = None
        self._tool_sent: list[str] = []

    async def _chunk(self, text: str) -> None:
        if self.v2:
            await self.handler.reply(
                self.request, ReplyChunkV2, seq=self.seq, model=self.model, text=text
            )
        else:
            await self.handler.reply(
                self.request, ReplyChunkV1, seq=self.seq, model=self.model, text=text
            )
        self.seq += 1

    async def text(self, text: str) -> None:
        await self._arguments.flush()
        await self.writer.write(text)

    async def tool(self, delta: ToolUseDelta) -> None:
        """One tool-call delta, after the text before it; its content block index counts
        a text block before the first call."""
        if not self.v2:
            logger.warning(
                "request %s: tool call from a v1 request dropped", self.request.request_id
            )
            return
        await self.writer.flush()
        if self._block_offset is None:
            self._block_offset = 1 if self.writer.sent else 0
        if self._call is None or delta.id or delta.name or delta.index != self._call.index:
            await self._arguments.flush()
            self._call = ToolCallDelta(index=delta.index, block=delta.index + self._block_offset)
            self._arguments = ChunkWriter(self._call_arguments, self.handler.coalescing)
            if delta.id or delta.name:
                start = self._call.model_copy(
                    update={"id": delta.id, "name": delta.name, "arguments": delta.arguments}
                )
                await self._publish(start)
                return
        if delta.arguments:
            await self._arguments.write(delta.arguments)

    async def _call_arguments(self, arguments: str) -> None:
        assert self._call is not None  # noqa: S101 - written only once a call is open
        await self._publish(self._call.model_copy(update={"arguments": arguments}))

    async def _publish(self, call: ToolCallDelta) -> None:
        self._tool_sent.append(call.arguments)
        await self.handler.reply(
            self.request, ReplyChunkV2, seq=self.seq, model=self.model, tool_call=call
        )
        self.seq += 1

    async def flush(self) -> None:
        await self.writer.flush()
        await self._arguments.flush()

    def sent(self) -> str:
        """What the client has received, tool-call arguments included (to count it)."""
        return "".join(self.writer.sent) + "".join(self._tool_sent)


class GenerationHandler:
    def __init__(
        self,
        catalog: CatalogSource,
        providers: Callable[[str], Provider],
        publisher: Publisher,
        *,
        journal: RequestJournal | None = None,
        prepared: PreparedStore | None = None,
        router: ResilientRouter | None = None,
        coalescing: Coalescing | None = None,
        lease_s: float = 30.0,
        admission_max_age_s: float | None = None,
        longest_answer_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._lease_s = lease_s
        self._max_age = admission_max_age_s
        self._longest_answer = (
            None if longest_answer_s is None else timedelta(seconds=longest_answer_s)
        )
        self._clock = clock
        self._providers = providers
        self._catalog = catalog
        self._publisher = publisher
        self._journal: RequestJournal = journal or InMemoryJournal()
        self._prepared = prepared
        self._router = router or ResilientRouter(
            providers, retry=RetryPolicy(), timeouts=Timeouts()
        )
        self.coalescing = coalescing or Coalescing()

    async def __call__(self, delivered: Delivered[AdmissionV1 | AdmissionV2]) -> None:
        request = ChatRequestV2.of(delivered.event.request)
        owner = uuid.uuid4().hex
        claim = await self._journal.claim(
            request.request_id, request.principal, owner=owner, lease_s=self._lease_s
        )
        if claim.held and claim.previous != "settled":
            # the partition moved while another router still works on it (a rebalance):
            # serving or interrupting now would answer twice or bill an answer at zero
            REDELIVERED.labels("in_progress").inc()
            raise RequestInProgress(
                f"request {request.request_id} is in progress elsewhere (lease held)"
            )
        renewing = asyncio.create_task(self._keep_lease(request.request_id, owner))
        try:
            await self._handle(request, claim, delivered.event)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            try:
                await self._journal.release(request.request_id, owner)
            except TollgateError as exc:  # it runs out by itself
                logger.warning("lease of %s not released: %s", request.request_id, exc.message)

    async def _keep_lease(self, request_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._journal.renew(request_id, owner, self._lease_s)
            except TollgateError as exc:
                logger.warning("lease of %s not renewed: %s", request_id, exc.message)

    async def _handle(
        self, request: ChatRequestV2, claim: Claim, admission: AdmissionV1 | AdmissionV2
    ) -> None:
        if claim.previous is not None:
            REDELIVERED.labels(claim.previous).inc()
            logger.info(
                "request %s redelivered (state %s, attempt %d)",
                request.request_id,
                claim.previous,
                claim.attempts,
            )
            if claim.previous == "settled":
                return
            if claim.previous == "settling" and claim.records is not None:
                await self._republish(request, claim.records)
                return
            if claim.previous == "streaming":
                await self._interrupted(request)
                return
        await self._serve(request, admission)

    # -- serving ---------------------------------------------------------------------------

    def _expired(self, admission: AdmissionV1 | AdmissionV2) -> RequestExpired | None:
        """Why ``admission`` must not run: it is older than ``admission_max_age_s``, or its
        reservation may be released (``reservation_expires_at``) before the longest answer
        (``longest_answer_s``, the router's total timeout) started now could end — a request
        running on a released reservation could take its caller past a limit."""
        now = self._clock()
        age = (now - admission.admitted_at).total_seconds()
        if self._max_age is not None and age > self._max_age:
            return RequestExpired(
                f"the request waited {age:.0f} s for a model; its token reservation may"
                " have been released: send it again"
            )
        expires = admission.reservation_expires_at
        longest = self._longest_answer
        if expires is not None and longest is not None and now + longest > expires:
            return RequestExpired(
                "the request waited too long for a model: its token reservation would"
                " run out before an answer could end; send it again"
            )
        return None

    async def _serve(self, request: ChatRequestV2, admission: AdmissionV1 | AdmissionV2) -> None:
        """Answer ``request``; the model is never asked for more output than the meter
        reserved, and an admission whose reservation may be released before its answer
        could end (see :meth:`_expired`) is not run."""
        catalog = self._catalog.current
        model_id = request.model or catalog.default_model
        started_at = utcnow()
        t0 = time.perf_counter()
        # the request's span; each call to a provider is a CLIENT span of its own inside it
        with tracer.start_as_current_span(
            f"chat {model_id}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model_id,
                "tollgate.request_id": request.request_id,
            },
        ) as span:
            spec = catalog.get(model_id)
            error: ProviderError | None = None
            if spec is None:
                error = ModelNotFound(f"unknown model {model_id!r}")
            elif not spec.allows(request.groups):
                error = ModelNotAllowed(f"model {model_id!r} is not allowed for your groups")
            else:
                error = self._expired(admission)
            if error is not None or spec is None:
                assert error is not None  # noqa: S101
                span.set_status(Status(StatusCode.ERROR, error.message))
                await self._fail_before_start(request, model_id, error, started_at, t0)
                return
            stream = _Stream(self, request, spec.id, v2=isinstance(admission, AdmissionV2))
            if self._prepared is not None and await self._serve_prepared(
                request, spec, stream, started_at, t0
            ):
                span.set_attribute("tollgate.cache_hit", True)
                return
            outcome = Outcome(model=spec)
            usage: Usage | None = None
            stop_reason = "end_turn"
            ttft_ms: int | None = None
            provider_request = _provider_request(request, spec.id, admission.reserved_output_tokens)
            try:
                async for event in self._router.stream(
                    catalog.chain(spec.id, request.groups, request.allowed_models),
                    provider_request,
                    outcome,
                ):
                    if isinstance(event, TextDelta | ToolUseDelta):
                        if ttft_ms is None:
                            ttft_ms = int((time.perf_counter() - t0) * 1000)
                            stream.model = outcome.model.id
                            # journal first: a crash in between must not serve it twice
                            await self._journal.streaming(request.request_id)
                        if isinstance(event, TextDelta):
                            await stream.text(event.text)
                        else:
                            await stream.tool(event)
                    elif isinstance(event, Finished):
                        usage = event.usage
                        stop_reason = event.stop_reason
                await stream.flush()
            except ProviderError as exc:
                error = exc
            served = outcome.model
            span.set_attribute("gen_ai.system", genai.system_of(outcome.provider))
            span.set_attribute("gen_ai.response.model", served.id)
            if ttft_ms is not None:
                TTFT.labels(served.id).observe(ttft_ms / 1000)
                genai.observe_first_token(outcome.provider, served.id, ttft_ms / 1000)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error.message))
                if outcome.started:
                    # settle what the client received: provider usage never arrived
                    await stream.flush()
                    usage = Usage(
                        input_tokens=_prompt_tokens(request),
                        output_tokens=count_tokens(stream.sent()),
                    )
                else:
                    usage = Usage()
                await self._settle(
                    request,
                    served,
                    outcome.provider,
                    "error",
                    usage,
                    started_at,
                    t0,
                    ttft_ms=ttft_ms,
                    error_type=error.error_type,
                    outcome=outcome,
                    terminal=self.event(
                        request,
                        ReplyErrorV1,
                        seq=stream.seq,
                        model=served.id,
                        error=_error_info(error),
                    ),
                )
                return
            assert usage is not None  # noqa: S101 - the router raises when usage is missing
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
            await self._settle(
                request,
                served,
                outcome.provider,
                "ok",
                usage,
                started_at,
                t0,
                ttft_ms=ttft_ms,
                outcome=outcome,
                terminal=self.event(
                    request,
                    ReplyDoneV1,
                    seq=stream.seq,
                    model=served.id,
                    usage=usage,
                    stop_reason=stop_reason,
                    latency_ms=int((time.perf_counter() - t0) * 1000),
                ),
            )

    async def _serve_prepared(
        self,
        request: ChatRequestV2,
        spec: ModelSpec,
        stream: _Stream,
        started_at: datetime,
        t0: float,
    ) -> bool:
        assert self._prepared is not None  # noqa: S101
        wire = request.to_wire()
        if not isinstance(wire, ChatRequestV1):
            return False  # tools, images, structured output: always the model's own answer
        key = prepared_key(request.system, wire.messages)
        try:
            entry = await self._prepared.lookup(
                key, model=spec.id, principal=request.principal, now=utcnow()
            )
        except TollgateError as exc:
            logger.warning("prepared-response lookup failed, calling the model: %s", exc.message)
            return False
        if entry is None:
            return False
        words = entry.response.split(" ")
        ttft_ms = int((time.perf_counter() - t0) * 1000)
        for i, word in enumerate(words):
            await stream.writer.write(word if i == 0 else " " + word)
        await stream.writer.flush()
        CACHE_HITS.labels(spec.id).inc()
        await self._settle(
            request,
            spec,
            "cache",
            "ok",
            Usage(),
            started_at,
            t0,
            ttft_ms=ttft_ms,
            cache_hit=True,
            terminal=self.event(
                request,
                ReplyDoneV1,
                seq=stream.seq,
                model=spec.id,
                usage=Usage(),
                stop_reason="end_turn",
                latency_ms=int((time.perf_counter() - t0) * 1000),
            ),
        )
        return True

    async def _fail_before_start(
        self,
        request: ChatRequestV2,
        model_id: str,
        error: ProviderError,
        started_at: datetime,
        t0: float,
    ) -> None:
        spec = ModelSpec(id=model_id, provider="none")
        terminal = self.event(
            request, ReplyErrorV1, seq=0, model=model_id, error=_error_info(error)
        )
        await self._settle(
            request,
            spec,
            "none",
            "error",
            Usage(),
            started_at,
            t0,
            error_type=error.error_type,
            terminal=terminal,
        )

    def _provider_type(self, spec: ModelSpec) -> str:
        """What records call the provider (``bedrock``, ``openai``…), as the serving path
        does; the catalog key when no such provider is configured any more."""
        try:
            return self._providers(spec.provider).name
        except (KeyError, TollgateError):
            return spec.provider

    async def _interrupted(self, request: ChatRequestV2) -> None:
        """A router died mid-stream: end the client's stream and settle once, without calling
        the provider again (its usage for the dead stream is not knowable)."""
        model_id = request.model or self._catalog.current.default_model
        spec = self._catalog.current.get(model_id) or ModelSpec(id=model_id, provider="none")
        error = ErrorInfo(
            type="stream_interrupted",
            message="the router serving this request stopped mid-stream",
            retriable=True,
        )
        await self._settle(
            request,
            spec,
            self._provider_type(spec),
            "error",
            Usage(),
            utcnow(),
            time.perf_counter(),
            error_type=error.type,
            terminal=self.event(
                request, ReplyErrorV1, seq=TERMINAL_SEQ, model=spec.id, error=error
            ),
        )

    # -- publishing ------------------------------------------------------------------------

    async def reply(
        self,
        request: ChatRequestV2,
        kind: type[Reply],
        *,
        seq: int,
        model: str,
        **fields: object,
    ) -> None:
        await self._send_reply(request, self.event(request, kind, seq=seq, model=model, **fields))

    @staticmethod
    def event(
        request: ChatRequestV2,
        kind: type[Reply],
        *,
        seq: int,
        model: str,
        **fields: object,
    ) -> Reply:
        return kind(
            request_id=request.request_id,
            principal=request.principal,
            seq=seq,
            channel=request.channel,
            conversation_id=request.conversation_id,
            model=model,
            **fields,
        )

    async def _send_reply(
        self,
        request: ChatRequestV2,
        event: ReplyChunkV1 | ReplyChunkV2 | ReplyDoneV1 | ReplyErrorV1,
    ) -> None:
        await self._publisher.publish(
            request.reply_to.topic,
            event,
            key=request.request_id,
            partition=request.reply_to.partition,
        )

    async def _settle(
        self,
        request: ChatRequestV2,
        spec: ModelSpec,
        provider: str,
        status: str,
        usage: Usage,
        started_at: datetime,
        t0: float,
        *,
        ttft_ms: int | None = None,
        error_type: str | None = None,
        cache_hit: bool = False,
        outcome: Outcome | None = None,
        terminal: ReplyDoneV1 | ReplyErrorV1,
    ) -> None:
        """Journal the records and the terminal reply, then send that reply, then the
        records: a crash anywhere after the journal write republishes exactly these on
        redelivery, so an answer the client saw is never settled as interrupted."""
        latency_ms = int((time.perf_counter() - t0) * 1000)
        cost = Decimal(0) if cache_hit else spec.cost(usage)
        ok = status == "ok"
        REQUESTS.labels(spec.id, status).inc()
        TOKENS.labels(spec.id, "input").inc(usage.input_tokens)
        TOKENS.labels(spec.id, "output").inc(usage.output_tokens)
        LATENCY.labels(spec.id).observe(latency_ms / 1000)
        genai.observe_request(provider, spec.id, usage, latency_ms / 1000, error_type)
        retries = outcome.retries if outcome else 0
        fallback_used = outcome.fallback_used if outcome else False
        if retries:
            RETRIES.labels(spec.id).inc(retries)
        if fallback_used:
            FALLBACKS.labels(spec.id).inc()
        record = UsageRecordV1(
            request_id=request.request_id,
            principal=request.principal,
            model=spec.id,
            provider=provider,
            usage=usage,
            cost_usd=cost,
            status="ok" if ok else "error",
        )
        log = RequestLogV1(
            request_id=request.request_id,
            principal=request.principal,
            groups=request.groups,
            model=spec.id,
            provider=provider,
            status="ok" if ok else "error",
            error_type=error_type,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
            cache_hit=cache_hit,
            retries=retries,
            fallback_used=fallback_used,
            time_to_first_token_ms=ttft_ms,
            latency_ms=latency_ms,
            conversation_id=request.conversation_id,
            protocol=request.protocol,
            started_at=started_at,
        )
        records = json.dumps(
            {
                "usage": record.model_dump_json(),
                "log": log.model_dump_json(),
                "reply": terminal.model_dump_json(),
            },
            separators=(",", ":"),
        )
        await self._journal.settling(request.request_id, records)
        await self._send_reply(request, terminal)
        await self._publish_records(request, record, log)
        await self._journal.settled(request.request_id)
        logger.info(
            "request %s %s model=%s provider=%s in=%d out=%d cache_hit=%s retries=%d",
            request.request_id,
            status,
            spec.id,
            provider,
            usage.input_tokens,
            usage.output_tokens,
            cache_hit,
            retries,
        )

    async def _publish_records(
        self, request: ChatRequestV2, record: UsageRecordV1, log: RequestLogV1
    ) -> None:
        # two topics, no order between them to keep: one acknowledgement round, not two
        await asyncio.gather(
            self._publisher.publish(topics.USAGE, record, key=request.principal),
            self._publisher.publish(topics.LOGS, log, key=request.principal),
        )

    async def _republish(self, request: ChatRequestV2, records: str) -> None:
        data = json.loads(records)
        record = UsageRecordV1.model_validate_json(data["usage"])
        log = RequestLogV1.model_validate_json(data["log"])
        if "reply" in data:  # the client may not have had it: at least once, same seq
            await self._send_reply(request, _REPLY.validate_json(data["reply"]))
        await self._publish_records(request, record, log)
        await self._journal.settled(request.request_id)


#: what an image is counted as when a provider's usage never arrives (Anthropic's and
#: Bedrock's Claude count about 1 600 tokens for a large image)
IMAGE_TOKENS = 1600


def _prompt_tokens(request: ChatRequestV2) -> int:
    """The prompt's tokens by the local tokenizer, tool definitions and calls included,
    for a stream that failed before its provider reported usage."""
    parts = [m.text() for m in request.messages]
    images = 0
    for block in (b for m in request.messages for b in m.content):
        if isinstance(block, ToolUseContent):
            parts.append(block.name + json.dumps(block.input))
        elif isinstance(block, ToolResultContent):
            parts.append(block.content)
        elif isinstance(block, ImageContent):
            images += 1
    parts += [json.dumps(t.model_dump()) for t in request.tools]
    tokens = count_tokens(" ".join(request.system)) + count_tokens(" ".join(parts))
    return tokens + images * IMAGE_TOKENS


def _provider_request(request: ChatRequestV2, model: str, cap: int) -> ProviderRequest:
    return ProviderRequest(
        model=model,
        messages=request.messages,
        system=request.system,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        max_tokens_cap=cap,
        tools=request.tools,
        tool_choice=request.tool_choice,
        response_format=request.response_format,
        stop=request.stop,
        top_p=request.top_p,
        seed=request.seed,
        extras=dict(request.extras),
    )


def _error_info(error: ProviderError) -> ErrorInfo:
    return ErrorInfo(
        type=error.error_type,
        message=error.message,
        retriable=error.retriable,
        details={k: v for k, v in error.details.items() if isinstance(v, str | int)},
    )
