"""``POST /v1/embeddings`` in-process, driven by the official ``openai`` SDK, with Kafka replaced
by a publisher that answers each request with vector chunks through the real dispatcher."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable

import httpx
import openai
import pytest

from tollgate_core import topics
from tollgate_core.bus import Delivered
from tollgate_core.contracts import (
    Contract,
    EmbeddingRequestV1,
    EmbeddingsChunkV1,
    ErrorInfo,
    ReplyDoneV1,
    ReplyErrorV1,
    Usage,
)
from tollgate_core.health import Health
from tollgate_stream.app import create_app
from tollgate_stream.errors import OpenAIError
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer, Identity
from tollgate_stream.openai.api import OpenAIApi
from tollgate_stream.openai.auth import DevBearerAuthenticator
from tollgate_stream.openai.models import RouterModelCatalog, StaticModelCatalog
from tollgate_stream.replies import Reply, ReplyDispatcher
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.waiters import ReplyWaiters


def vector(i: int, dims: int = 4) -> list[float]:
    return [i + k / 4 for k in range(dims)]  # exact in float32


def encoded(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


Script = Callable[[EmbeddingRequestV1], list[Reply]]


def vectors_in_chunks(request: EmbeddingRequestV1) -> list[Reply]:
    """Two chunks, the second delivered first: the edge orders by index."""
    common = {"request_id": request.request_id, "principal": request.principal, "model": "emb"}
    n = len(request.inputs)
    half = (n + 1) // 2
    first = EmbeddingsChunkV1(
        seq=0, first_index=0, vectors=tuple(encoded(vector(i)) for i in range(half)), **common
    )
    second = EmbeddingsChunkV1(
        seq=1, first_index=half, vectors=tuple(encoded(vector(i)) for i in range(half, n)), **common
    )
    done = ReplyDoneV1(seq=2, usage=Usage(input_tokens=3 * n), **common)
    return [first, second, done]


class Pipeline:
    def __init__(self, dispatcher: ReplyDispatcher) -> None:
        self.dispatcher = dispatcher
        self.script: Script = vectors_in_chunks
        self.requests: list[EmbeddingRequestV1] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        assert topic == topics.REQUESTS and isinstance(event, EmbeddingRequestV1)
        self.requests.append(event)
        task = asyncio.create_task(self._reply(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, request: EmbeddingRequestV1) -> None:
        for offset, reply in enumerate(self.script(request)):
            await asyncio.sleep(0)
            await self.dispatcher(
                Delivered(reply, topics.REPLIES, request.reply_to.partition, offset, None)
            )


class ModelPolicy(DevBearerAuthenticator):
    async def authorize_model(self, identity: Identity, model: str) -> None:
        if model == "forbidden":
            raise OpenAIError.forbidden(f"{model} is not allowed for you", "model_not_allowed")


@pytest.fixture
def edge() -> tuple[openai.AsyncOpenAI, httpx.AsyncClient, Pipeline]:
    settings = StreamSettings(openai_reply_timeout_s=5)
    waiters = ReplyWaiters()
    pipeline = Pipeline(ReplyDispatcher(Subscriptions(), waiters))
    gateway = Gateway(settings, pipeline, ChannelOwnerAuthorizer(), reply_partitions=[1])
    catalog = RouterModelCatalog(
        "http://router.invalid",
        StaticModelCatalog(["emb"]),
        transport=httpx.MockTransport(lambda _: httpx.Response(503)),
    )
    api = OpenAIApi(gateway, waiters, ModelPolicy(), catalog, reply_timeout_s=5)
    app = create_app(settings, Health(), gateway, Subscriptions(), api)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")
    sdk = openai.AsyncOpenAI(
        api_key="sk-alice", base_url="http://edge/v1", http_client=http, max_retries=0
    )
    return sdk, http, pipeline


Edge = tuple[openai.AsyncOpenAI, httpx.AsyncClient, Pipeline]


async def test_the_sdk_gets_float_vectors_in_input_order_with_usage(edge: Edge) -> None:
    sdk, _, pipeline = edge
    result = await sdk.embeddings.create(
        model="emb", input=["a", "b", "c"], encoding_format="float", dimensions=4
    )
    assert [d.index for d in result.data] == [0, 1, 2]
    assert [d.embedding for d in result.data] == [vector(0), vector(1), vector(2)]
    assert result.model == "emb" and result.usage.prompt_tokens == 9
    assert result.usage.total_tokens == 9
    [request] = pipeline.requests
    assert request.inputs == ("a", "b", "c") and request.dimensions == 4
    assert request.protocol == "openai" and request.principal == "sk-alice"


async def test_base64_is_passed_through_and_the_sdk_default_decodes(edge: Edge) -> None:
    sdk, http, _ = edge
    raw = await http.post(
        "/v1/embeddings",
        headers={"authorization": "Bearer k"},
        json={"model": "emb", "input": "one", "encoding_format": "base64"},
    )
    assert raw.status_code == 200
    assert raw.json()["data"][0]["embedding"] == encoded(vector(0))
    # the SDK asks for base64 by default and decodes it itself
    result = await sdk.embeddings.create(model="emb", input="one")
    assert result.data[0].embedding == vector(0)


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("text", ("text",)),
        (["x", "y"], ("x", "y")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
    ids=["string", "strings", "token-array", "token-arrays"],
)
async def test_every_input_shape(edge: Edge, value: object, inputs: tuple[object, ...]) -> None:
    _, http, pipeline = edge
    response = await http.post(
        "/v1/embeddings",
        headers={"authorization": "Bearer k"},
        json={"model": "emb", "input": value},
    )
    assert response.status_code == 200, response.text
    assert pipeline.requests[-1].inputs == inputs
    assert len(response.json()["data"]) == len(inputs)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "emb", "input": ""}, "input"),
        ({"model": "emb", "input": []}, "input"),
        ({"model": "emb", "input": [[]]}, "input"),
        ({"model": "emb", "input": ["a", 1]}, "input"),
        ({"model": "emb", "input": [-1]}, "input"),
        ({"model": "emb", "input": ["a"] * 2049}, "input"),
        ({"model": "emb"}, "input"),
        ({"input": "a"}, "model"),
        ({"model": "emb", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "emb", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "emb", "input": "a", "temperature": 1}, "temperature"),
    ],
    ids=[
        "empty-string",
        "empty-list",
        "empty-token-array",
        "mixed",
        "negative-token",
        "too-many",
        "no-input",
        "no-model",
        "encoding",
        "dimensions",
        "unknown-field",
    ],
)
async def test_bad_requests_are_openai_errors_and_enter_no_pipeline(
    edge: Edge, body: dict[str, object], param: str
) -> None:
    _, http, pipeline = edge
    response = await http.post("/v1/embeddings", headers={"authorization": "Bearer k"}, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert pipeline.requests == []


async def test_policy_and_pipeline_errors(edge: Edge) -> None:
    sdk, http, pipeline = edge
    with pytest.raises(openai.PermissionDeniedError):
        await sdk.embeddings.create(model="forbidden", input="a")
    unauthenticated = await http.post("/v1/embeddings", json={"model": "emb", "input": "a"})
    assert unauthenticated.status_code == 401
    assert pipeline.requests == []

    def refused(request: EmbeddingRequestV1) -> list[Reply]:
        error = ErrorInfo(
            type="validation_error",
            message="model 'chat' is a chat model: use /v1/chat/completions",
            details={"param": "model"},
        )
        return [ReplyErrorV1(request_id=request.request_id, principal="p", seq=0, error=error)]

    pipeline.script = refused
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk.embeddings.create(model="chat", input="a")
    assert exc.value.param == "model" and "chat model" in exc.value.message
