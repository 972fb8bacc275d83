"""The whole router path — catalog, registry, resilience, adapter, handler — against the local
Bedrock and OpenAI-compatible servers: retries on pre-stream throttling, fallback across
providers, and an in-stream failure after the first token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    UsageRecordV1,
)
from tollgate_router.catalog import (
    AnthropicProviderConfig,
    BedrockProviderConfig,
    Catalog,
    CatalogSource,
    ModelSpec,
    OpenAIProviderConfig,
)
from tollgate_router.handlers import GenerationHandler
from tollgate_router.providers.local import count_tokens
from tollgate_router.providers.registry import ProviderRegistry
from tollgate_router.resilience import ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.streaming import Coalescing
from tollgate_router.testing import FakeProviderServer, Scenario


@pytest.fixture
async def rig(
    fake_server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[GenerationHandler, InMemoryPublisher]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    catalog = Catalog(
        default_model="haiku",
        providers={
            "bedrock": BedrockProviderConfig(region="us-east-1", endpoint_url=fake_server.url),
            "vllm": OpenAIProviderConfig(base_url=fake_server.url + "/v1"),
            "anthropic": AnthropicProviderConfig(base_url=fake_server.url),
        },
        models=(
            ModelSpec(
                id="haiku",
                provider="bedrock",
                upstream="us.anthropic.claude-3-5-haiku-20241022-v1:0",
                input_price_per_mtok=Decimal("0.8"),
                output_price_per_mtok=Decimal(4),
                fallbacks=("llama",),
            ),
            ModelSpec(id="llama", provider="vllm", upstream="llama-3.1-8b"),
            ModelSpec(id="claude", provider="anthropic", upstream="claude-3-5-haiku-latest"),
        ),
    )
    registry = ProviderRegistry(connect_timeout_s=2)
    source = CatalogSource(catalog)
    source.on_change(registry.sync)
    publisher = InMemoryPublisher()

    async def no_sleep(_: float) -> None:
        return None

    handler = GenerationHandler(
        source,
        registry,
        publisher,
        router=ResilientRouter(
            registry, retry=RetryPolicy(max_retries=2), timeouts=Timeouts(), sleep=no_sleep
        ),
        coalescing=Coalescing(delay_s=0, max_chars=1),
    )
    try:
        yield handler, publisher
    finally:
        await registry.aclose()


def admission(model: str | None = None) -> Delivered[AdmissionV1]:
    request = ChatRequestV1(
        principal="alice",
        model=model,
        messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
    )
    event = AdmissionV1(request=request, reserved_input_tokens=1, reserved_output_tokens=10)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key="alice")


def records(publisher: InMemoryPublisher) -> tuple[UsageRecordV1, RequestLogV1]:
    [usage] = publisher.on(topics.USAGE)
    [log] = publisher.on(topics.LOGS)
    assert isinstance(usage, UsageRecordV1) and isinstance(log, RequestLogV1)
    return usage, log


async def test_bedrock_throttling_before_the_stream_is_retried_then_billed_once(
    rig: tuple[GenerationHandler, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    throttled = Scenario(status=429, error_type="ThrottlingException")
    fake_server.script = [throttled, throttled, Scenario()]
    await handler(admission())
    assert isinstance(publisher.on(topics.REPLIES)[-1], ReplyDoneV1)
    usage, log = records(publisher)
    assert usage.usage.output_tokens == 5 and usage.provider == "bedrock"
    assert usage.cost_usd == Decimal("0.0000256")  # 7 x 0.8/M + 5 x 4/M
    assert log.retries == 2 and not log.fallback_used
    assert len(fake_server.received) == 3


async def test_an_unavailable_bedrock_model_falls_back_to_the_openai_compatible_server(
    rig: tuple[GenerationHandler, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    down = Scenario(status=503, error_type="ServiceUnavailableException")
    fake_server.script = [down, down, down, Scenario()]
    await handler(admission())
    usage, log = records(publisher)
    assert log.fallback_used and log.model == "llama" and usage.provider == "openai"
    assert fake_server.received[-1].path == "/v1/chat/completions"


async def test_a_bedrock_stream_error_after_the_first_token_ends_the_stream_and_settles(
    rig: tuple[GenerationHandler, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    fake_server.script = [Scenario(fail_after=2, stream_error="throttlingException")]
    await handler(admission())
    replies = publisher.on(topics.REPLIES)
    assert [type(r) for r in replies] == [ReplyChunkV1, ReplyChunkV1, ReplyErrorV1]
    error = replies[-1]
    assert isinstance(error, ReplyErrorV1) and error.error.type == "provider_throttled"
    usage, log = records(publisher)
    # the provider's usage never came: the text delivered is counted by the local tokenizer
    assert usage.status == "error" and usage.usage.output_tokens == count_tokens("Hello from")
    assert usage.estimated and usage.estimated_by == "estimate"
    assert log.retries == 0 and len(fake_server.received) == 1


async def test_a_malformed_openai_stream_ends_with_a_typed_error_and_is_settled(
    rig: tuple[GenerationHandler, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    down = Scenario(status=503, error_type="ServiceUnavailableException")
    # Bedrock is down, so the fallback serves: two chunks, then a chunk that is not an object
    fake_server.script = [down, down, down, Scenario(garbage_after=2)]
    await handler(admission())
    replies = publisher.on(topics.REPLIES)
    assert [type(r) for r in replies] == [ReplyChunkV1, ReplyChunkV1, ReplyErrorV1]
    error = replies[-1]
    assert isinstance(error, ReplyErrorV1) and error.error.type == "provider_unavailable"
    assert "malformed response" in error.error.message
    usage, log = records(publisher)
    assert usage.status == "error" and usage.usage.output_tokens == count_tokens("Hello from")
    assert usage.estimated and usage.estimated_by == "estimate"
    assert log.error_type == "provider_unavailable" and log.model == "llama"


async def test_an_anthropic_attempt_that_failed_after_reporting_usage_is_billed_with_the_retry(
    fake_server: FakeProviderServer, rig: tuple[GenerationHandler, InMemoryPublisher]
) -> None:
    """Anthropic reports the input tokens in ``message_start``; an ``error`` event before the
    first text then fails the attempt, which it bills. The retry's usage and the failed
    attempt's are settled together; nothing the provider did not report is invented."""
    handler, publisher = rig
    overloaded = Scenario(fail_after=0, stream_error="overloaded_error", input_tokens=9)
    fake_server.script = [overloaded, Scenario(input_tokens=9)]
    await handler(admission("claude"))
    assert isinstance(publisher.on(topics.REPLIES)[-1], ReplyDoneV1)
    usage, log = records(publisher)
    # the fake reports 9 in / 1 out at message_start and 5 out at the end
    assert (usage.usage.input_tokens, usage.usage.output_tokens) == (9 + 9, 1 + 5)
    assert usage.status == "ok" and log.retries == 1


async def test_attempts_that_report_no_usage_before_failing_settle_at_zero(
    fake_server: FakeProviderServer, rig: tuple[GenerationHandler, InMemoryPublisher]
) -> None:
    """Bedrock's and OpenAI's streams report usage only at their end, and an HTTP error
    before the stream reports none: such failed attempts cost the caller nothing."""
    handler, publisher = rig
    fake_server.script = [
        Scenario(status=429, error_type="ThrottlingException"),  # Bedrock, before the stream
        Scenario(fail_after=0, stream_error="throttlingException"),  # Bedrock, in the stream
        Scenario(status=429, error_type="ThrottlingException"),  # the last retry
        Scenario(status=503, error_type="x"),  # the OpenAI-compatible fallback, before
    ]
    await handler(admission())
    error = publisher.on(topics.REPLIES)[-1]
    assert isinstance(error, ReplyErrorV1)
    usage, _ = records(publisher)
    assert usage.status == "error" and usage.usage.total_tokens == 0
