"""Embeddings requests through the router's handler — catalog, registry, retry policy, adapter
— against the local Bedrock and OpenAI-compatible servers: vectors in order and in chunks
under the record limit, usage and log records, typed refusals of the wrong kind of model."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    EmbeddingAdmissionV1,
    EmbeddingRequestV1,
    EmbeddingsChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    Usage,
    UsageRecordV1,
)
from tollgate_router import embedding
from tollgate_router.catalog import (
    BedrockProviderConfig,
    Catalog,
    CatalogSource,
    ModelSpec,
    OpenAIProviderConfig,
)
from tollgate_router.handlers import GenerationHandler
from tollgate_router.providers.registry import ProviderRegistry
from tollgate_router.resilience import ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.testing import FakeProviderServer, Scenario, fake_vector
from tollgate_router.tokens import estimate_tokens

Rig = tuple[GenerationHandler, InMemoryPublisher]


@pytest.fixture
async def rig(
    fake_server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    catalog = Catalog(
        default_model="chat",
        providers={
            "bedrock": BedrockProviderConfig(region="us-east-1", endpoint_url=fake_server.url),
            "vllm": OpenAIProviderConfig(base_url=fake_server.url + "/v1"),
        },
        models=(
            ModelSpec(id="chat", provider="vllm"),
            ModelSpec(
                id="titan",
                kind="embedding",
                provider="bedrock",
                upstream="amazon.titan-embed-text-v2:0",
                input_price_per_mtok=Decimal("0.02"),
                dimensions=(256, 512),
            ),
            ModelSpec(
                id="cohere",
                kind="embedding",
                provider="bedrock",
                upstream="cohere.embed-english-v3",
            ),
            ModelSpec(id="bge", kind="embedding", provider="vllm", upstream="bge-small"),
        ),
    )
    registry = ProviderRegistry(connect_timeout_s=2)
    source = CatalogSource(catalog)
    source.on_change(registry.sync)
    publisher = InMemoryPublisher()

    async def no_sleep(_: float) -> None:
        return None

    router = ResilientRouter(
        registry, retry=RetryPolicy(max_retries=2), timeouts=Timeouts(), sleep=no_sleep
    )
    try:
        yield GenerationHandler(source, registry, publisher, router=router), publisher
    finally:
        await registry.aclose()


def embed(
    model: str, *inputs: str | tuple[int, ...], **kw: object
) -> Delivered[EmbeddingAdmissionV1]:
    request = EmbeddingRequestV1(
        principal="alice",
        model=model,
        inputs=inputs,
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
        **kw,  # type: ignore[arg-type]
    )
    event = EmbeddingAdmissionV1(request=request, reserved_input_tokens=100)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key="alice")


def records(publisher: InMemoryPublisher) -> tuple[UsageRecordV1, RequestLogV1]:
    [usage] = publisher.on(topics.USAGE)
    [log] = publisher.on(topics.LOGS)
    assert isinstance(usage, UsageRecordV1) and isinstance(log, RequestLogV1)
    return usage, log


def vectors(publisher: InMemoryPublisher) -> list[list[float]]:
    out: list[list[float]] = []
    for reply in publisher.on(topics.REPLIES):
        if isinstance(reply, EmbeddingsChunkV1):
            assert reply.first_index == len(out)
            for v in reply.vectors:
                raw = base64.b64decode(v)
                out.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    return out


async def test_titan_vectors_usage_and_log(rig: Rig, fake_server: FakeProviderServer) -> None:
    handler, publisher = rig
    await handler(embed("titan", "a first text", "second", dimensions=256))
    replies = publisher.on(topics.REPLIES)
    assert [type(r) for r in replies] == [EmbeddingsChunkV1, ReplyDoneV1]
    assert vectors(publisher) == [fake_vector("a first text", 256), fake_vector("second", 256)]
    done = replies[-1]
    assert isinstance(done, ReplyDoneV1) and done.usage == Usage(input_tokens=4) and done.seq == 1
    usage, log = records(publisher)
    assert usage.usage == Usage(input_tokens=4) and usage.provider == "bedrock"
    assert usage.cost_usd == Decimal("0.00000008") and not usage.estimated  # 4 x 0.02/M
    assert log.operation == "embeddings" and log.status == "ok" and log.model == "titan"
    assert (log.input_tokens, log.output_tokens) == (4, 0)


async def test_many_vectors_come_in_chunks_under_the_record_limit(
    rig: Rig, fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    texts = [f"text {i}" for i in range(200)]
    await handler(embed("cohere", *texts))
    chunks = [r for r in publisher.on(topics.REPLIES) if isinstance(r, EmbeddingsChunkV1)]
    assert len(chunks) == 3  # 200 x 1024 float32 values, base64: ~1.1 MB
    assert all(len(c.model_dump_json()) < embedding.CHUNK_BYTES + 1024 for c in chunks)
    assert vectors(publisher) == [fake_vector(t, 1024) for t in texts]
    assert [c.seq for c in chunks] == [0, 1, 2] and publisher.on(topics.REPLIES)[-1].seq == 3
    usage, _ = records(publisher)
    assert usage.usage.input_tokens == 400  # from Bedrock's header, 96 + 96 + 8 texts


async def test_a_server_without_usage_is_counted_and_marked(
    rig: Rig, fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    fake_server.script = [Scenario(deviations=frozenset({"no_usage"}))]
    await handler(embed("bge", "internationalization matters", (1, 2, 3)))
    assert vectors(publisher) == [
        fake_vector("internationalization matters", 8),
        fake_vector("1 2 3", 8),
    ]
    usage, log = records(publisher)
    assert usage.usage.input_tokens == estimate_tokens("internationalization matters") + 3
    assert usage.estimated and usage.estimated_by == "estimate" and log.usage_estimated


async def test_throttling_is_retried(rig: Rig, fake_server: FakeProviderServer) -> None:
    handler, publisher = rig
    throttled = Scenario(status=429, error_type="ThrottlingException")
    fake_server.script = [throttled, Scenario()]
    await handler(embed("titan", "hello"))
    assert isinstance(publisher.on(topics.REPLIES)[-1], ReplyDoneV1)
    assert records(publisher)[1].retries == 1 and len(fake_server.received) == 2


async def test_a_request_the_provider_refuses_is_not_retried(
    rig: Rig, fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    fake_server.script = [Scenario(status=400, error_type="ValidationException")]
    await handler(embed("titan", "hello"))
    [error] = publisher.on(topics.REPLIES)
    assert isinstance(error, ReplyErrorV1) and error.error.type == "validation_error"
    assert len(fake_server.received) == 1
    usage, log = records(publisher)
    assert usage.status == "error" and usage.usage == Usage() and log.retries == 0


@pytest.mark.parametrize(
    ("delivered", "message", "param"),
    [
        (lambda: embed("chat", "x"), "is a chat model", "model"),
        (lambda: embed("titan", "x", dimensions=1024), r"dimensions \[256, 512\]", "dimensions"),
        (lambda: embed("titan", (1, 2)), "token arrays", "input"),
        (lambda: embed("nope", "x"), "unknown model", None),
    ],
    ids=["embeddings-to-a-chat-model", "dimensions", "token-arrays-to-bedrock", "unknown"],
)
async def test_wrong_requests_are_typed_errors_and_cost_nothing(
    rig: Rig,
    fake_server: FakeProviderServer,
    delivered: object,
    message: str,
    param: str | None,
) -> None:
    handler, publisher = rig
    await handler(delivered())  # type: ignore[operator]
    [error] = publisher.on(topics.REPLIES)
    assert isinstance(error, ReplyErrorV1)
    assert fake_server.received == []
    assert re.search(message, error.error.message)
    if param is not None:
        assert error.error.details["param"] == param
    usage, log = records(publisher)
    assert usage.usage == Usage() and usage.status == "error" and log.operation == "embeddings"


async def test_a_chat_request_to_an_embedding_model_is_a_typed_error(
    rig: Rig, fake_server: FakeProviderServer
) -> None:
    handler, publisher = rig
    request = ChatRequestV1(
        principal="alice",
        model="titan",
        messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
    )
    admission = AdmissionV1(request=request, reserved_input_tokens=5, reserved_output_tokens=5)
    await handler(Delivered(event=admission, topic=topics.ADMITTED, partition=0, offset=0, key="a"))
    [error] = publisher.on(topics.REPLIES)
    assert isinstance(error, ReplyErrorV1) and error.error.type == "validation_error"
    assert "use /v1/embeddings" in error.error.message and error.error.details["param"] == "model"
    assert fake_server.received == []
    usage, log = records(publisher)
    assert usage.usage == Usage() and log.operation == "chat"


def test_pack_keeps_order_and_size() -> None:
    vecs = [[float(i)] * 100 for i in range(10)]  # 100 float32: 536 base64 characters each
    chunks = list(embedding.pack(vecs, max_bytes=1200))
    assert [first for first, _ in chunks] == [0, 2, 4, 6, 8]
    assert [v for _, batch in chunks for v in batch] == [embedding.encode_vector(v) for v in vecs]
    [(first, [single])] = embedding.pack([[1.0] * 1000], max_bytes=10)  # one always fits
    assert first == 0 and single == embedding.encode_vector([1.0] * 1000)
