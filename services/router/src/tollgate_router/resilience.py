"""Provider resilience: jittered retries before the first token, fallback along the catalog's
chain, one circuit breaker per provider, and the four timeouts (connect is httpx's; time to
first token, idle gap and total are enforced here around any provider stream)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tollgate_core.contracts import Usage
from tollgate_router import genai
from tollgate_router.catalog import ModelSpec
from tollgate_router.errors import (
    CircuitOpen,
    InvalidProviderRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from tollgate_router.providers.base import (
    Embedder,
    EmbeddingCall,
    Embeddings,
    Finished,
    Provider,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
)
from tollgate_router.providers.params import fit

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.router")


@dataclass(frozen=True, slots=True)
class Timeouts:
    first_token_s: float = 30.0
    idle_s: float = 30.0
    total_s: float = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        return rand() * min(self.max_delay_s, self.base_delay_s * float(2**attempt))


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open after ``reset_s``
    (one trial call) → closed on success, open again on failure."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._reset_s else "open"

    def check(self, provider: str) -> bool:
        """Raise :class:`CircuitOpen` unless a call may go; True when it is the half-open
        trial, which the caller ends with :meth:`success`, :meth:`failure` or
        :meth:`release`."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        raise CircuitOpen(f"{provider}: circuit open", details={"provider": provider})

    def release(self) -> None:
        """The trial ended with no verdict on the provider (throttled, a bad request, the
        caller gone): the next call may be the trial instead of the circuit staying shut."""
        self._trial = False

    def success(self) -> None:
        self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self._failures += 1
        if self._trial or self._failures >= self._threshold:
            self._opened_at, self._trial = self._clock(), False


class _Watchdog:
    """One timer per stream instead of a timeout context per event: waiting for an event
    only moves a float; the timer, when it fires early, re-arms itself at the deadline. It
    cancels ``task`` only while that task waits for the provider, never while the consumer
    works on an event."""

    __slots__ = ("_handle", "_loop", "_task", "deadline", "expired", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.waiting = False
        self.expired = False

    def wait_until(self, deadline: float) -> None:
        self.deadline = deadline
        self.waiting = True
        if self._handle is None or self._handle.when() > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self.waiting and self._loop.time() >= self.deadline:
            self.expired = True
            self._task.cancel()
        elif self.waiting:
            self._handle = self._loop.call_at(self.deadline, self._fire)
        # not waiting: the next wait_until arms it again

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def guarded(
    events: AsyncIterator[ProviderEvent], timeouts: Timeouts
) -> AsyncIterator[ProviderEvent]:
    """Re-yield ``events``, raising ProviderTimeout on a late first token, idle gap or total."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always iterated from a task
    watchdog = _Watchdog(loop, task)
    cancelling = task.cancelling()
    deadline = loop.time() + timeouts.total_s
    waiting_first = True
    try:
        while True:
            now = loop.time()
            remaining = deadline - now
            limit = min(timeouts.first_token_s if waiting_first else timeouts.idle_s, remaining)
            watchdog.wait_until(now + max(limit, 0))
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError as exc:
                if watchdog.expired and task.uncancel() <= cancelling:
                    what = (
                        "total"
                        if limit == remaining
                        else ("time to first token" if waiting_first else "idle gap")
                    )
                    raise ProviderTimeout(f"{what} timeout after {limit:.1f}s") from exc
                raise
            except ProviderError:
                raise
            except Exception as exc:
                # an adapter that broke on what the provider sent: the request still ends
                # with a typed error, and is settled, instead of dying in the consumer
                logger.warning("provider stream failed unexpectedly", exc_info=True)
                raise ProviderUnavailable(
                    f"unexpected provider failure: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                watchdog.waiting = False
            if waiting_first and isinstance(event, TextDelta | ToolUseDelta):
                waiting_first = False
            yield event
    finally:
        watchdog.close()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(slots=True)
class Outcome:
    """What happened while serving one request (read by the handler for its records)."""

    model: ModelSpec
    provider: str = ""
    retries: int = 0
    fallback_used: bool = False
    started: bool = False
    attempts: list[str] = field(default_factory=list)
    #: what the providers reported for attempts that failed before the first token (and
    #: so were retried or fell back): billed, so settled with the request
    failed_usage: Usage = field(default_factory=Usage)

    def add_failed(self, usage: Usage | None) -> None:
        if usage is not None:
            self.failed_usage = plus(self.failed_usage, usage)


def plus(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
    )


class ResilientRouter:
    """Serves a request from the first model of a chain that can, within the policies."""

    def __init__(
        self,
        providers: Callable[[str], Provider],
        *,
        retry: RetryPolicy,
        timeouts: Timeouts,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._providers = providers
        self._retry = retry
        self._timeouts = timeouts
        self._breakers: dict[str, CircuitBreaker] = {}
        self._threshold = breaker_threshold
        self._reset_s = breaker_reset_s
        self._sleep = sleep
        self._rand = rand

    def breaker(self, provider: str) -> CircuitBreaker:
        b = self._breakers.get(provider)
        if b is None:
            b = self._breakers[provider] = CircuitBreaker(
                threshold=self._threshold, reset_s=self._reset_s
            )
        return b

    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]:
        return self._breakers

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    async def backoff(self, attempt: int) -> None:
        await self._sleep(self._retry.delay(attempt, self._rand))

    def provider_of(self, spec: ModelSpec, outcome: Outcome) -> Provider:
        outcome.model = spec
        provider = self._providers(spec.provider)
        outcome.provider = provider.name
        return provider

    async def stream(
        self, chain: list[ModelSpec], request: ProviderRequest, outcome: Outcome
    ) -> AsyncIterator[ProviderEvent]:
        """The first answer the chain gives: each model retried while its failure is
        retriable and nothing was streamed, then the next (fallbacks that cannot take the
        request skipped); the last failure when none answers."""
        last: ProviderError | None = None
        for index, spec in enumerate(chain):
            provider = self._providers(spec.provider)
            upstream = _fitted(request, spec, provider, outcome, primary=not index)
            if upstream is None:
                continue  # a fallback that cannot take the request is not one
            if index:
                outcome.fallback_used = True
            outcome.model = spec
            outcome.provider = provider.name
            attempt = 0
            while True:
                try:
                    # closed with this generator: a consumer gone mid-stream releases the
                    # breaker's trial at once
                    attempt_events = self._attempt(provider, spec, upstream, attempt, outcome)
                    async with contextlib.aclosing(attempt_events) as events:
                        async for event in events:
                            yield event
                    return
                except ProviderError as exc:
                    if outcome.started:
                        raise
                    outcome.add_failed(exc.reported_usage)
                    last = exc
                    if not exc.retriable or attempt >= self._retry.max_retries:
                        break
                    await self._sleep(self._retry.delay(attempt, self._rand))
                    attempt += 1
                    outcome.retries += 1
            if not last.fallback:
                raise last
        assert last is not None  # noqa: S101 - chain is never empty here
        raise last

    async def _attempt(
        self,
        provider: Provider,
        spec: ModelSpec,
        upstream: ProviderRequest,
        attempt: int,
        outcome: Outcome,
    ) -> AsyncGenerator[ProviderEvent, None]:
        """One call to ``provider: a CLIENT span of its own, judged by the provider's
        circuit breaker (a call cancelled or ended by the consumer gives no verdict)."""
        outcome.attempts.append(spec.id)
        breaker = self.breaker(spec.provider)
        trial = False
        span = _attempt_span(provider.name, spec, upstream, attempt)
        try:
            trial = breaker.check(spec.provider)
            async for event in guarded(provider.stream(upstream), self._timeouts):
                if isinstance(event, TextDelta | ToolUseDelta):
                    outcome.started = True
                elif isinstance(event, Finished):
                    span.set_attributes(
                        {
                            "gen_ai.usage.input_tokens": event.usage.input_tokens,
                            "gen_ai.usage.output_tokens": event.usage.output_tokens,
                            "gen_ai.response.finish_reasons": [event.stop_reason],
                        }
                    )
                yield event
            breaker.success()
            span.end()
        except ProviderError as exc:
            span.set_attribute("error.type", exc.error_type)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            span.end()
            if exc.breaker_failure:
                breaker.failure()
            elif trial:
                breaker.release()
            raise
        except BaseException:
            span.end()
            if trial:
                breaker.release()
            raise


def _fitted(
    request: ProviderRequest,
    spec: ModelSpec,
    provider: Provider,
    outcome: Outcome,
    *,
    primary: bool,
) -> ProviderRequest | None:
    """The request for ``spec`` on ``provider``: the model's upstream id and output limit, and
    the parameters the provider cannot take dropped or refused. A fallback that cannot take
    it gives None (skipped); the primary raises, naming the parameter."""
    try:
        return fit(
            dataclasses.replace(
                request,
                model=spec.upstream_id,
                max_tokens=spec.max_tokens(request.max_tokens, request.max_tokens_cap),
                max_tokens_cap=None,
            ),
            provider,
            model=spec.id,
            drop=spec.drop_params,
        )
    except InvalidProviderRequest:
        if primary:
            outcome.provider = provider.name
            raise
        return None


async def call_once(
    router: ResilientRouter, spec: ModelSpec, call: EmbeddingCall, outcome: Outcome
) -> Embeddings:
    """Embeddings from ``spec`` with its provider's retry policy, breaker and total timeout;
    no fallback (another model's vectors are in another space)."""
    provider = router.provider_of(spec, outcome)
    if not isinstance(provider, Embedder):
        raise InvalidProviderRequest(f"provider {spec.provider!r} cannot embed")
    breaker = router.breaker(spec.provider)
    while True:
        outcome.attempts.append(spec.id)
        trial = breaker.check(spec.provider)
        try:
            async with asyncio.timeout(router.timeouts.total_s):
                result = await provider.embed(call)
        except TimeoutError as exc:
            error: ProviderError = ProviderTimeout(f"{provider.name}: embeddings timed out")
            error.__cause__ = exc
        except ProviderError as exc:
            error = exc
        except BaseException:
            if trial:
                breaker.release()
            raise
        else:
            breaker.success()
            return result
        if error.breaker_failure:
            breaker.failure()
        elif trial:
            breaker.release()
        if not (error.retriable and outcome.retries < router.retry.max_retries):
            raise error
        await router.backoff(outcome.retries)
        outcome.retries += 1


def _attempt_span(provider: str, spec: ModelSpec, upstream: ProviderRequest, attempt: int) -> Span:
    """A span per call to a provider (GenAI semantic conventions), child of the request's.

    Started, not made current: the stream is an async generator, whose caller runs between
    its events, so the span is ended by hand where the attempt ends."""
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": genai.OPERATION,
        "gen_ai.system": genai.system_of(provider),
        "gen_ai.request.model": upstream.model,
        "tollgate.model": spec.id,
        "tollgate.attempt": attempt,
    }
    if upstream.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = upstream.max_tokens
    return tracer.start_span(f"chat {upstream.model}", kind=SpanKind.CLIENT, attributes=attributes)
