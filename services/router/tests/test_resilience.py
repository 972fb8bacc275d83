"""Retries, fallbacks, circuit breaker and timeouts of the resilient router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tollgate_core.contracts import ChatMessage, TextBlock
from tollgate_router.catalog import Catalog, LocalProviderConfig, ModelSpec
from tollgate_router.errors import (
    CircuitOpen,
    InvalidProviderRequest,
    ProviderThrottled,
    ProviderTimeout,
    ProviderUnavailable,
)
from tollgate_router.providers.base import Finished, ProviderEvent, ProviderRequest, TextDelta
from tollgate_router.resilience import (
    CircuitBreaker,
    Outcome,
    ResilientRouter,
    RetryPolicy,
    Timeouts,
)
from tollgate_router.testing import ScriptedProvider, Step

CATALOG = Catalog(
    default_model="primary",
    providers={"p1": LocalProviderConfig(), "p2": LocalProviderConfig()},
    models=(
        ModelSpec(id="primary", provider="p1", upstream="up-1", fallbacks=("backup",)),
        ModelSpec(id="backup", provider="p2", upstream="up-2"),
    ),
)
REQUEST = ProviderRequest(
    model="primary", messages=(ChatMessage(role="user", content=[TextBlock(text="q")]),)
)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def router(
    providers: dict[str, ScriptedProvider],
    sleeps: Sleeps | None = None,
    *,
    timeouts: Timeouts | None = None,
    threshold: int = 5,
) -> ResilientRouter:
    return ResilientRouter(
        providers.__getitem__,
        retry=RetryPolicy(max_retries=2, base_delay_s=0.1, max_delay_s=1.0),
        timeouts=timeouts or Timeouts(),
        breaker_threshold=threshold,
        sleep=sleeps or Sleeps(),
        rand=lambda: 0.5,
    )


async def run(r: ResilientRouter, model: str = "primary") -> tuple[list[ProviderEvent], Outcome]:
    chain = CATALOG.chain(model)
    outcome = Outcome(model=chain[0])
    events = [e async for e in r.stream(chain, REQUEST, outcome)]
    return events, outcome


async def test_throttling_before_the_first_token_is_retried_with_jittered_backoff() -> None:
    p1 = ScriptedProvider("p1", [Step(error=ProviderThrottled("slow down"))] * 2 + [Step()])
    sleeps = Sleeps()
    events, outcome = await run(router({"p1": p1, "p2": ScriptedProvider("p2")}, sleeps))
    assert isinstance(events[-1], Finished)
    assert outcome.retries == 2 and not outcome.fallback_used and outcome.model.id == "primary"
    assert sleeps.calls == [0.05, 0.1]  # 0.5 x min(1.0, 0.1 x 2**attempt)
    assert [c.model for c in p1.calls] == ["up-1"] * 3


async def test_an_unavailable_model_falls_back_along_the_chain_after_its_retries() -> None:
    p1 = ScriptedProvider("p1", [Step(error=ProviderUnavailable("down"))])
    p2 = ScriptedProvider("p2")
    events, outcome = await run(router({"p1": p1, "p2": p2}))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "a b c"
    assert outcome.fallback_used and outcome.model.id == "backup" and outcome.retries == 2
    assert len(p1.calls) == 3 and [c.model for c in p2.calls] == ["up-2"]


async def test_an_invalid_request_is_neither_retried_nor_sent_to_a_fallback() -> None:
    p1 = ScriptedProvider("p1", [Step(error=InvalidProviderRequest("bad"))])
    p2 = ScriptedProvider("p2")
    with pytest.raises(InvalidProviderRequest):
        await run(router({"p1": p1, "p2": p2}))
    assert len(p1.calls) == 1 and p2.calls == []


async def test_a_failure_after_the_first_token_is_not_retried_and_propagates() -> None:
    p1 = ScriptedProvider("p1", [Step(error=ProviderUnavailable("cut"), fail_after=2)])
    p2 = ScriptedProvider("p2")
    r = router({"p1": p1, "p2": p2})
    chain = CATALOG.chain("primary")
    outcome = Outcome(model=chain[0])
    seen: list[str] = []
    with pytest.raises(ProviderUnavailable):
        async for e in r.stream(chain, REQUEST, outcome):
            if isinstance(e, TextDelta):
                seen.append(e.text)
    assert seen == ["a", " b"] and outcome.started and outcome.retries == 0
    assert len(p1.calls) == 1 and p2.calls == []


async def test_the_breaker_opens_after_consecutive_failures_and_skips_to_the_fallback() -> None:
    p1 = ScriptedProvider("p1", [Step(error=ProviderUnavailable("down"))])
    p2 = ScriptedProvider("p2")
    r = router({"p1": p1, "p2": p2}, threshold=3)
    await run(r)  # three failed calls open the breaker
    assert r.breaker("p1").state == "open"
    _, outcome = await run(r)
    assert len(p1.calls) == 3  # not called again while open
    assert outcome.fallback_used and outcome.model.id == "backup"


def test_breaker_half_opens_after_the_reset_time_and_closes_on_success() -> None:
    now = [0.0]
    b = CircuitBreaker(threshold=2, reset_s=10, clock=lambda: now[0])
    b.failure()
    b.failure()
    with pytest.raises(CircuitOpen):
        b.check("p")
    now[0] = 10.0
    b.check("p")  # one trial call
    with pytest.raises(CircuitOpen):
        b.check("p")  # and only one
    b.success()
    assert b.state == "closed"
    b.failure()
    b.failure()
    now[0] = 20.0
    b.check("p")
    b.failure()  # the trial failed: open again
    assert b.state == "open"


async def test_time_to_first_token_timeout_is_retriable_then_falls_back() -> None:
    p1 = ScriptedProvider("p1", [Step(first_delay_s=5)])
    p2 = ScriptedProvider("p2")
    r = router({"p1": p1, "p2": p2}, timeouts=Timeouts(first_token_s=0.05, idle_s=1, total_s=10))
    _, outcome = await run(r)
    assert outcome.model.id == "backup" and outcome.retries == 2


async def test_an_idle_gap_after_the_first_token_ends_the_stream_with_a_timeout() -> None:
    p1 = ScriptedProvider("p1", [Step(gap_s=5)])
    r = router(
        {"p1": p1, "p2": ScriptedProvider("p2")},
        timeouts=Timeouts(first_token_s=1, idle_s=0.05, total_s=10),
    )
    with pytest.raises(ProviderTimeout, match="idle gap"):
        await run(r)


async def test_the_total_timeout_bounds_a_slow_but_steady_stream() -> None:
    p1 = ScriptedProvider("p1", [Step(chunks=tuple("x" * 50), gap_s=0.02)])
    r = router(
        {"p1": p1, "p2": ScriptedProvider("p2")},
        timeouts=Timeouts(first_token_s=1, idle_s=1, total_s=0.1),
    )
    with pytest.raises(ProviderTimeout, match="total"):
        await run(r)


async def test_a_half_open_trial_that_ends_with_no_verdict_does_not_leave_the_circuit_shut() -> (
    None
):
    down, throttled = ProviderUnavailable("down"), ProviderThrottled("slow down")
    p1 = ScriptedProvider("p1", [Step(error=down), Step(error=throttled), Step()])
    r = ResilientRouter(
        {"p1": p1, "p2": ScriptedProvider("p2")}.__getitem__,
        retry=RetryPolicy(max_retries=0),
        timeouts=Timeouts(),
        breaker_threshold=1,
        breaker_reset_s=0,  # half-open as soon as it opens
        sleep=Sleeps(),
    )
    _, outcome = await run(r)  # fails: the circuit opens
    assert outcome.model.id == "backup" and r.breaker("p1").state == "half_open"
    _, outcome = await run(r)  # the trial is throttled: says nothing of the provider's health
    assert outcome.model.id == "backup"
    _, outcome = await run(r)  # so the next call is a trial again, and it closes the circuit
    assert outcome.model.id == "primary" and len(p1.calls) == 3
    assert r.breaker("p1").state == "closed"


async def test_a_trial_abandoned_by_its_consumer_is_released() -> None:
    p1 = ScriptedProvider("p1", [Step(error=ProviderUnavailable("down")), Step()])
    r = ResilientRouter(
        {"p1": p1, "p2": ScriptedProvider("p2")}.__getitem__,
        retry=RetryPolicy(max_retries=0),
        timeouts=Timeouts(),
        breaker_threshold=1,
        breaker_reset_s=0,
        sleep=Sleeps(),
    )
    await run(r)
    chain = CATALOG.chain("primary")
    events = r.stream(chain, REQUEST, Outcome(model=chain[0]))
    assert isinstance(await anext(events), TextDelta)  # the trial is streaming
    await events.aclose()  # the client went away
    _, outcome = await run(r)
    assert outcome.model.id == "primary"


class BrokenAdapter:
    """An adapter that trips over what its provider sent, after one token."""

    name = "p1"

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        yield TextDelta("a")
        raise TypeError("'int' object is not subscriptable")


async def test_an_adapter_that_breaks_mid_stream_surfaces_as_a_typed_unavailable_error() -> None:
    r = ResilientRouter(
        {"p1": BrokenAdapter(), "p2": ScriptedProvider("p2")}.__getitem__,  # type: ignore[dict-item]
        retry=RetryPolicy(max_retries=0),
        timeouts=Timeouts(),
        sleep=Sleeps(),
    )
    with pytest.raises(ProviderUnavailable, match="unexpected provider failure: TypeError"):
        await run(r)


async def test_time_the_consumer_spends_on_an_event_is_not_an_idle_gap() -> None:
    # the provider answers at once, the consumer (Kafka, a slow client) takes its time
    r = router(
        {"p1": ScriptedProvider("p1"), "p2": ScriptedProvider("p2")},
        timeouts=Timeouts(first_token_s=0.05, idle_s=0.05, total_s=10),
    )
    chain = CATALOG.chain("primary")
    outcome = Outcome(model=chain[0])
    seen: list[ProviderEvent] = []
    async for event in r.stream(chain, REQUEST, outcome):
        seen.append(event)
        await asyncio.sleep(0.15)  # three idle limits per event
    assert isinstance(seen[-1], Finished) and outcome.model.id == "primary"


async def test_a_cancelled_consumer_is_cancelled_not_timed_out() -> None:
    r = router(
        {"p1": ScriptedProvider("p1", [Step(first_delay_s=5)]), "p2": ScriptedProvider("p2")},
        timeouts=Timeouts(first_token_s=10, idle_s=10, total_s=10),
    )
    task = asyncio.create_task(run(r))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
