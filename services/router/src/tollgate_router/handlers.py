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
from dataclasses import dataclass
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
    ChatMessage,
    ChatRequestV2,
    EmbeddingAdmissionV1,
    EmbeddingRequestV1,
    EmbeddingsChunkV1,
    ErrorInfo,
    ImageContent,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyV1,
    RequestLogV1,
    TextBlock,
    TextContent,
    ToolCallDelta,
    ToolResultContent,
    ToolUseContent,
    Usage,
    UsageRecordV1,
    utcnow,
)
from tollgate_core.errors import TollgateError
from tollgate_core.telemetry import REQUEST_LATENCY_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS
from tollgate_router import embedding, genai
from tollgate_router.catalog import Catalog, CatalogSource, ModelSpec
from tollgate_router.errors import (
    InvalidProviderRequest,
    ModelNotAllowed,
    ModelNotFound,
    ProviderError,
    RequestExpired,
    RequestInProgress,
)
from tollgate_router.journal import Claim, InMemoryJournal, RequestJournal
from tollgate_router.prepared import PreparedStore, prepared_key
from tollgate_router.providers.base import (
    Embeddings,
    Finished,
    Provider,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
)
from tollgate_router.providers.local import count_tokens
from tollgate_router.resilience import (
    Outcome,
    ResilientRouter,
    RetryPolicy,
    Timeouts,
    call_once,
    plus,
)
from tollgate_router.streaming import ChunkWriter, Coalescing
from tollgate_router.tokens import TokenCounters, count_chat

Reply = TypeVar("Reply", ReplyChunkV1, ReplyChunkV2, ReplyDoneV1, ReplyErrorV1, EmbeddingsChunkV1)
#: what the router serves: a chat request (worked on as v2) or an embeddings request, and the
#: admissions that carry them
AnyRequest = ChatRequestV2 | EmbeddingRequestV1
AnyAdmission = AdmissionV1 | AdmissionV2 | EmbeddingAdmissionV1
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


@dataclass
class _Answer:
    """What a streamed answer came to."""

    usage: Usage | None = None
    stop_reason: str = "end_turn"
    ttft_ms: int | None = None
    estimated_by: str | None = None
    error: ProviderError | None = None


@dataclass(frozen=True)
class _Call:
    """One chat request on its way to the providers: where it streams to, the chain of
    models to try, the request as a provider takes it, and what the attempts came to."""

    request: ChatRequestV2
    stream: _Stream
    chain: list[ModelSpec]
    upstream: ProviderRequest
    outcome: Outcome


@dataclass
class _Run:
    """One request's run as its records tell it: what served it (``spec`` through
    ``provider``), when it started (wall clock and monotonic), and how it went."""

    request: AnyRequest
    spec: ModelSpec
    provider: str
    started: tuple[datetime, float]
    ttft_ms: int | None = None
    outcome: Outcome | None = None
    cache_hit: bool = False
    #: what counted the usage when the provider reported none
    estimated_by: str | None = None

    @property
    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started[1]) * 1000)


def _records(
    run: _Run, status: str, usage: Usage, error_type: str | None
) -> tuple[UsageRecordV1, RequestLogV1]:
    """The usage record and the request log of a finished run (a pure function of it)."""
    request, spec = run.request, run.spec
    cost = Decimal(0) if run.cache_hit else spec.cost(usage)
    outcome = status if status == "ok" else "error"
    estimated = run.estimated_by is not None
    record = UsageRecordV1(
        request_id=request.request_id,
        principal=request.principal,
        model=spec.id,
        provider=run.provider,
        usage=usage,
        cost_usd=cost,
        status=outcome,
        estimated=estimated,
        estimated_by=run.estimated_by,
    )
    log = RequestLogV1.of_request(
        request,
        started_at=run.started[0],
        model=spec.id,
        provider=run.provider,
        status=outcome,
        error_type=error_type,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=cost,
        cache_hit=run.cache_hit,
        retries=run.outcome.retries if run.outcome else 0,
        fallback_used=run.outcome.fallback_used if run.outcome else False,
        time_to_first_token_ms=run.ttft_ms,
        latency_ms=run.latency_ms,
        usage_estimated=estimated,
        usage_estimated_by=run.estimated_by,
    )
    return record, log


def _observe(log: RequestLogV1) -> None:
    """The run's metrics, read off its log record."""
    model = log.model
    usage = Usage(input_tokens=log.input_tokens, output_tokens=log.output_tokens)
    REQUESTS.labels(model, log.status).inc()
    TOKENS.labels(model, "input").inc(log.input_tokens)
    TOKENS.labels(model, "output").inc(log.output_tokens)
    LATENCY.labels(model).observe(log.latency_ms / 1000)
    genai.observe_request(log.provider, model, usage, log.latency_ms / 1000, log.error_type)
    if log.retries:
        RETRIES.labels(model).inc(log.retries)
    if log.fallback_used:
        FALLBACKS.labels(model).inc()


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
        counters: TokenCounters | None = None,
    ) -> None:
        self._counters = counters or TokenCounters()
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

    async def __call__(self, delivered: Delivered[AnyAdmission]) -> None:
        admitted = delivered.event
        request: AnyRequest = (
            admitted.request
            if isinstance(admitted, EmbeddingAdmissionV1)
            else ChatRequestV2.of(admitted.request)
        )
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

    async def _handle(self, request: AnyRequest, claim: Claim, admission: AnyAdmission) -> None:
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
        if isinstance(admission, EmbeddingAdmissionV1):
            await self._serve_embeddings(admission)
        elif isinstance(request, ChatRequestV2):
            await self._serve(request, admission)

    # -- serving ---------------------------------------------------------------------------

    @staticmethod
    def _model(catalog: Catalog, model_id: str, groups: tuple[str, ...]) -> ModelSpec:
        """``catalog``'s model ``model_id`` for a caller in ``groups``; raises why not."""
        spec = catalog.get(model_id)
        if spec is None:
            raise ModelNotFound(f"unknown model {model_id!r}")
        if not spec.allows(groups):
            raise ModelNotAllowed(f"model {model_id!r} is not allowed for your groups")
        return spec

    def _check_fresh(self, admitted_at: datetime, expires_at: datetime | None) -> None:
        """Raise :class:`RequestExpired` for an admission older than
        ``admission_max_age_s``, or whose reservation may be released (``expires_at``) before
        the longest answer (``longest_answer_s``) started now could end — a request running
        on a released reservation could take its caller past a limit."""
        now = self._clock()
        age = (now - admitted_at).total_seconds()
        if self._max_age is not None and age > self._max_age:
            raise RequestExpired(
                f"the request waited {age:.0f} s for a model; its token reservation may"
                " have been released: send it again"
            )
        longest = self._longest_answer
        if expires_at is not None and longest is not None and now + longest > expires_at:
            raise RequestExpired(
                "the request waited too long for a model: its token reservation would"
                " run out before an answer could end; send it again"
            )

    def _chat_model(
        self,
        catalog: Catalog,
        model_id: str,
        request: ChatRequestV2,
        admission: AdmissionV1 | AdmissionV2,
    ) -> ModelSpec:
        """The model that answers ``request``; raises why it may not run at all."""
        spec = self._model(catalog, model_id, request.groups)
        if spec.kind != "chat":
            raise InvalidProviderRequest(
                f"model {model_id!r} is an embedding model: use /v1/embeddings",
                details={"param": "model"},
            )
        self._check_fresh(admission.admitted_at, admission.reservation_expires_at)
        return spec

    async def _serve(self, request: ChatRequestV2, admission: AdmissionV1 | AdmissionV2) -> None:
        """Answer ``request``; the model is never asked for more output than the meter
        reserved, and an admission whose reservation may be released before its answer
        could end (see :meth:`_check_fresh`) is not run."""
        catalog = self._catalog.current
        model_id = request.model or catalog.default_model
        started = (utcnow(), time.perf_counter())
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
            try:
                spec = self._chat_model(catalog, model_id, request, admission)
            except ProviderError as error:
                span.set_status(Status(StatusCode.ERROR, error.message))
                await self._fail_before_start(request, model_id, error, started)
                return
            v2 = isinstance(admission, AdmissionV2)
            stream = _Stream(self, request, spec.id, v2=v2)
            if self._prepared is not None and await self._serve_prepared(
                request, _Run(request, spec, "cache", started, cache_hit=True), stream
            ):
                span.set_attribute("tollgate.cache_hit", True)
                return
            upstream = _provider_request(request, spec.id, admission.reserved_output_tokens)
            chain = catalog.chain(spec.id, request.groups, request.allowed_models)
            call = _Call(request, stream, chain, upstream, Outcome(model=spec))
            answer = await self._generate(call, started)
            await self._finish(call, answer, started)

    async def _generate(self, call: _Call, started: tuple[datetime, float]) -> _Answer:
        """Stream the chain's answer to the client; what it came to (usage, stop reason,
        first-token time), or the error that ended it."""
        request, stream, outcome = call.request, call.stream, call.outcome
        answer = _Answer()
        reported = True
        try:
            async for event in self._router.stream(call.chain, call.upstream, outcome):
                if isinstance(event, TextDelta | ToolUseDelta):
                    if answer.ttft_ms is None:
                        answer.ttft_ms = int((time.perf_counter() - started[1]) * 1000)
                        stream.model = outcome.model.id
                        # journal first: a crash in between must not serve it twice
                        await self._journal.streaming(request.request_id)
                    if isinstance(event, TextDelta):
                        await stream.text(event.text)
                    else:
                        await stream.tool(event)
                elif isinstance(event, Finished):
                    answer.usage, answer.stop_reason = event.usage, event.stop_reason
                    reported = event.reported
            await stream.flush()
            if not reported:
                answer.usage, answer.estimated_by = self._count(
                    request, outcome.model, stream.sent()
                )
        except ProviderError as exc:
            answer.error = exc
        return answer

    async def _finish(self, call: _Call, answer: _Answer, started: tuple[datetime, float]) -> None:
        """Observe the answer and settle it: the provider's usage (plus what failed attempts
        reported), or for a failed answer what the client received, counted here."""
        request, stream, outcome = call.request, call.stream, call.outcome
        served = outcome.model
        span = trace.get_current_span()
        span.set_attribute("gen_ai.system", genai.system_of(outcome.provider))
        span.set_attribute("gen_ai.response.model", served.id)
        if answer.ttft_ms is not None:
            TTFT.labels(served.id).observe(answer.ttft_ms / 1000)
            genai.observe_first_token(outcome.provider, served.id, answer.ttft_ms / 1000)
        run = _Run(request, served, outcome.provider, started, answer.ttft_ms, outcome)
        if answer.error is not None:
            span.set_status(Status(StatusCode.ERROR, answer.error.message))
            usage = Usage()
            if outcome.started:  # provider usage never arrived
                await stream.flush()
                output = count_tokens(stream.sent())
                usage = Usage(input_tokens=_prompt_tokens(request), output_tokens=output)
                run.estimated_by = "estimate"
            error = ReplyErrorV1.answering(
                request,
                seq=stream.seq,
                model=served.id,
                error=_error_info(answer.error),
            )
            usage = plus(usage, outcome.failed_usage)
            await self._settle(run, "error", usage, error, answer.error.error_type)
            return
        usage = plus(answer.usage or Usage(), outcome.failed_usage)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [answer.stop_reason])
        run.estimated_by = answer.estimated_by
        done = ReplyDoneV1.answering(
            request,
            seq=stream.seq,
            model=served.id,
            usage=usage,
            stop_reason=answer.stop_reason,
            latency_ms=run.latency_ms,
        )
        await self._settle(run, "ok", usage, done)

    async def _serve_embeddings(self, admission: EmbeddingAdmissionV1) -> None:
        """Answer an embeddings request: its vectors in as many chunks as they need, then a
        done with the usage; no fallback (see :mod:`tollgate_router.embedding`)."""
        request = admission.request
        model_id = request.model or self._catalog.current.default_model
        started = (utcnow(), time.perf_counter())
        try:
            spec = self._model(self._catalog.current, model_id, request.groups)
            self._check_fresh(admission.admitted_at, None)
            unfit = embedding.check(spec, request)
            if unfit is not None:
                raise unfit
        except ProviderError as error:
            await self._fail_before_start(request, model_id, error, started)
            return
        outcome = Outcome(model=spec)
        try:
            with tracer.start_as_current_span(
                f"embeddings {spec.id}",
                attributes={
                    "gen_ai.operation.name": "embeddings",
                    "gen_ai.request.model": spec.id,
                    "tollgate.request_id": request.request_id,
                },
            ):
                result = await call_once(
                    self._router, spec, embedding.call_of(spec, request), outcome
                )
        except ProviderError as exc:
            terminal = ReplyErrorV1.answering(request, seq=0, model=spec.id, error=_error_info(exc))
            provider = outcome.provider or self._provider_type(spec)
            run = _Run(request, spec, provider, started, outcome=outcome)
            await self._settle(run, "error", Usage(), terminal, exc.error_type)
            return
        await self._deliver_embeddings(request, result, outcome, started)

    async def _deliver_embeddings(
        self,
        request: EmbeddingRequestV1,
        result: Embeddings,
        outcome: Outcome,
        started: tuple[datetime, float],
    ) -> None:
        """Vector chunks, then the done; settled with the provider's input tokens (or the
        router's count of them). ``started``: the request's start, wall clock and monotonic."""
        spec = outcome.model
        estimated_by: str | None = None
        tokens = result.input_tokens
        if tokens is None:
            counter = self._counters.get(spec.tokenizer)
            tokens, estimated_by = embedding.count_inputs(counter, request.inputs), counter.name
        usage = Usage(input_tokens=tokens)
        await self._journal.streaming(request.request_id)
        seq = 0
        for first, vectors in embedding.pack(result.vectors):
            await self.reply(
                request,
                EmbeddingsChunkV1,
                seq=seq,
                model=spec.id,
                first_index=first,
                vectors=vectors,
            )
            seq += 1
        run = _Run(request, spec, outcome.provider, started, outcome=outcome)
        run.estimated_by = estimated_by
        terminal = ReplyDoneV1.answering(
            request, seq=seq, model=spec.id, usage=usage, latency_ms=run.latency_ms
        )
        await self._settle(run, "ok", usage, terminal)

    def _count(self, request: ChatRequestV2, spec: ModelSpec, sent: str) -> tuple[Usage, str]:
        """The usage of an answer whose provider reported none, counted with the served
        model's tokenizer (or the estimate), and what counted it: the prompt's texts, tool
        definitions, calls and results, each image as :data:`IMAGE_TOKENS`."""
        counter = self._counters.get(spec.tokenizer)
        parts, images = _prompt_parts(request)
        usage = Usage(
            input_tokens=count_chat(counter, request.system, parts) + images * IMAGE_TOKENS,
            output_tokens=counter.count(sent),
        )
        logger.info(
            "request %s: %s reported no usage; counted by %s",
            request.request_id,
            spec.id,
            counter.name,
        )
        return usage, counter.name

    async def _serve_prepared(self, request: ChatRequestV2, run: _Run, stream: _Stream) -> bool:
        """Answer ``request`` (``run``) from a prepared response, if one matches."""
        assert self._prepared is not None  # noqa: S101
        spec = run.spec
        key = _prepared_key(request)
        if key is None:
            return False
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
        run.ttft_ms = run.latency_ms
        for i, word in enumerate(words):
            await stream.writer.write(word if i == 0 else " " + word)
        await stream.writer.flush()
        CACHE_HITS.labels(spec.id).inc()
        terminal = ReplyDoneV1.answering(
            request,
            seq=stream.seq,
            model=spec.id,
            usage=Usage(),
            stop_reason="end_turn",
            latency_ms=run.latency_ms,
        )
        await self._settle(run, "ok", Usage(), terminal)
        return True

    async def _fail_before_start(
        self,
        request: AnyRequest,
        model_id: str,
        error: ProviderError,
        started: tuple[datetime, float],
    ) -> None:
        run = _Run(request, ModelSpec(id=model_id, provider="none"), "none", started)
        terminal = ReplyErrorV1.answering(request, seq=0, model=model_id, error=_error_info(error))
        await self._settle(run, "error", Usage(), terminal, error.error_type)

    def _provider_type(self, spec: ModelSpec) -> str:
        """What records call the provider (``bedrock``, ``openai``…), as the serving path
        does; the catalog key when no such provider is configured any more."""
        try:
            return self._providers(spec.provider).name
        except (KeyError, TollgateError):
            return spec.provider

    async def _interrupted(self, request: AnyRequest) -> None:
        """A router died mid-stream: end the client's stream and settle once, without calling
        the provider again (its usage for the dead stream is not knowable)."""
        model_id = request.model or self._catalog.current.default_model
        spec = self._catalog.current.get(model_id) or ModelSpec(id=model_id, provider="none")
        error = ErrorInfo(
            type="stream_interrupted",
            message="the router serving this request stopped mid-stream",
            retriable=True,
        )
        run = _Run(request, spec, self._provider_type(spec), (utcnow(), time.perf_counter()))
        terminal = ReplyErrorV1.answering(request, seq=TERMINAL_SEQ, model=spec.id, error=error)
        await self._settle(run, "error", Usage(), terminal, error.type)

    # -- publishing ------------------------------------------------------------------------

    async def reply(
        self,
        request: AnyRequest,
        kind: type[Reply],
        *,
        seq: int,
        model: str,
        **fields: object,
    ) -> None:
        await self._send_reply(request, kind.answering(request, seq=seq, model=model, **fields))

    async def _send_reply(
        self,
        request: AnyRequest,
        event: ReplyChunkV1 | ReplyChunkV2 | ReplyDoneV1 | ReplyErrorV1 | EmbeddingsChunkV1,
    ) -> None:
        await self._publisher.publish(
            request.reply_to.topic,
            event,
            key=request.request_id,
            partition=request.reply_to.partition,
        )

    async def _settle(
        self,
        run: _Run,
        status: str,
        usage: Usage,
        terminal: ReplyDoneV1 | ReplyErrorV1,
        error_type: str | None = None,
    ) -> None:
        """Journal the records and the terminal reply, then send that reply, then the
        records: a crash anywhere after the journal write republishes exactly these on
        redelivery, so an answer the client saw is never settled as interrupted."""
        request = run.request
        record, log = _records(run, status, usage, error_type)
        _observe(log)
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
            run.spec.id,
            run.provider,
            usage.input_tokens,
            usage.output_tokens,
            run.cache_hit,
            log.retries,
        )

    async def _publish_records(
        self, request: AnyRequest, record: UsageRecordV1, log: RequestLogV1
    ) -> None:
        # two topics, no order between them to keep: one acknowledgement round, not two
        await asyncio.gather(
            self._publisher.publish(topics.USAGE, record, key=request.principal),
            self._publisher.publish(topics.LOGS, log, key=request.principal),
        )

    async def _republish(self, request: AnyRequest, records: str) -> None:
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
    parts, images = _prompt_parts(request)
    tokens = count_tokens(" ".join(request.system)) + count_tokens(" ".join(parts))
    return tokens + images * IMAGE_TOKENS


def _prompt_parts(request: ChatRequestV2) -> tuple[list[str], int]:
    """The prompt's texts to count (messages, tool calls and results, tool definitions) and
    its number of images."""
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
    return parts, images


def _prepared_key(request: ChatRequestV2) -> str | None:
    """The prepared-answer key of a text-only request; None for one with tools, images,
    tool calls or results, or a response format (always the model's own answer)."""
    if request.tools or request.response_format is not None:
        return None
    messages: list[ChatMessage] = []
    for m in request.messages:
        texts = [TextBlock(text=b.text) for b in m.content if isinstance(b, TextContent)]
        if len(texts) != len(m.content):
            return None
        messages.append(ChatMessage(role=m.role, content=texts))
    return prepared_key(request.system, messages)


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
