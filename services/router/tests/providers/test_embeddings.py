"""The embedding adapters against the local servers speaking Bedrock InvokeModel (Titan Text
Embeddings and Cohere Embed bodies) and OpenAI ``/v1/embeddings``."""

from __future__ import annotations

import httpx
import pytest
from botocore.session import Session

from tollgate_router.errors import InvalidProviderRequest, ProviderThrottled
from tollgate_router.providers.base import Embedder, EmbeddingCall
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.testing import FakeProviderServer, Scenario, fake_vector

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"


def bedrock(server: FakeProviderServer, client: httpx.AsyncClient) -> BedrockProvider:
    session = Session()
    session.set_credentials("AKIDTEST", "secret-test")
    return BedrockProvider(client, region="us-east-1", endpoint_url=server.url, session=session)


def openai(server: FakeProviderServer, client: httpx.AsyncClient) -> OpenAIProvider:
    return OpenAIProvider(client, base_url=server.url + "/v1", api_key="sk-test")


def vec(text: str, dims: int) -> tuple[float, ...]:
    return tuple(fake_vector(text, dims))


async def test_both_adapters_are_embedders(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    assert isinstance(bedrock(fake_server, http_client), Embedder)
    assert isinstance(openai(fake_server, http_client), Embedder)


async def test_titan_v2_one_signed_call_per_text_in_input_order(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    texts = ("the first text", "a second", "three words here")
    call = EmbeddingCall(model=TITAN, inputs=texts, dimensions=256)
    result = await bedrock(fake_server, http_client).embed(call)
    assert result.vectors == tuple(vec(t, 256) for t in texts)
    assert result.input_tokens == 3 + 2 + 3
    assert len(fake_server.received) == 3
    received = fake_server.received[0]
    assert received.path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert received.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert sorted(r.body["inputText"] for r in fake_server.received) == sorted(texts)
    assert received.body["dimensions"] == 256 and received.body["normalize"] is True


async def test_titan_default_length_and_refusals_before_any_call(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider = bedrock(fake_server, http_client)
    result = await provider.embed(EmbeddingCall(model=TITAN, inputs=("hello",)))
    assert len(result.vectors[0]) == 1024 and "dimensions" not in fake_server.received[0].body
    with pytest.raises(InvalidProviderRequest, match=r"dimensions \(256, 512, 1024\)") as exc:
        await provider.embed(EmbeddingCall(model=TITAN, inputs=("x",), dimensions=300))
    assert exc.value.details["param"] == "dimensions"
    with pytest.raises(InvalidProviderRequest, match="token arrays") as exc:
        await provider.embed(EmbeddingCall(model=TITAN, inputs=((1, 2, 3),)))
    assert exc.value.details["param"] == "input"
    assert len(fake_server.received) == 1


async def test_cohere_batches_of_96_with_the_token_count_from_the_header(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    texts = tuple(f"text number {i}" for i in range(100))
    call = EmbeddingCall(model=COHERE, inputs=texts, input_type="search_query")
    result = await bedrock(fake_server, http_client).embed(call)
    assert result.vectors == tuple(vec(t, 1024) for t in texts)
    assert result.input_tokens == 300
    assert [len(r.body["texts"]) for r in fake_server.received] == [96, 4]
    assert fake_server.received[0].body["input_type"] == "search_query"
    assert fake_server.received[0].body["embedding_types"] == ["float"]


async def test_cohere_refuses_what_it_cannot_take(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider = bedrock(fake_server, http_client)
    with pytest.raises(InvalidProviderRequest) as exc:
        await provider.embed(EmbeddingCall(model=COHERE, inputs=("x",), dimensions=512))
    assert exc.value.details["param"] == "dimensions"
    with pytest.raises(InvalidProviderRequest) as exc:
        await provider.embed(EmbeddingCall(model=COHERE, inputs=("x",), input_type="poetry"))
    assert exc.value.details["param"] == "input_type"
    v4 = await provider.embed(
        EmbeddingCall(model="cohere.embed-v4:0", inputs=("x",), dimensions=512)
    )
    assert (
        v4.vectors == (vec("x", 512),) and fake_server.received[-1].body["output_dimension"] == 512
    )


async def test_a_bedrock_error_is_typed(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake_server.script = [Scenario(status=429, error_type="ThrottlingException")]
    with pytest.raises(ProviderThrottled):
        await bedrock(fake_server, http_client).embed(EmbeddingCall(model=TITAN, inputs=("x",)))


async def test_openai_texts_and_token_arrays_in_order_with_usage(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    call = EmbeddingCall(
        model="text-embedding-3-small", inputs=("one two", (5, 6, 7)), dimensions=4
    )
    result = await openai(fake_server, http_client).embed(call)
    # the fake answers data in reverse: the adapter orders it by index
    assert result.vectors == (vec("one two", 4), vec("5 6 7", 4))
    assert result.input_tokens == 5
    [received] = fake_server.received
    assert received.path == "/v1/embeddings"
    assert received.headers["authorization"] == "Bearer sk-test"
    assert received.body == {
        "model": "text-embedding-3-small",
        "input": ["one two", [5, 6, 7]],
        "encoding_format": "float",
        "dimensions": 4,
    }


async def test_openai_without_usage_and_errors(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake_server.script = [
        Scenario(deviations=frozenset({"no_usage"})),
        Scenario(status=400, error_type="invalid_request_error"),
    ]
    provider = openai(fake_server, http_client)
    result = await provider.embed(EmbeddingCall(model="m", inputs=("a b c",)))
    assert result.input_tokens is None and result.vectors == (vec("a b c", 8),)
    with pytest.raises(InvalidProviderRequest, match="fake error"):
        await provider.embed(EmbeddingCall(model="m", inputs=("a",)))
