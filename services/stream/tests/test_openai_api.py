"""The OpenAI-compatible API in-process, driven by the official ``openai`` SDK, with Kafka
replaced by a publisher that answers each request with scripted replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tollgate_core import topics
from tollgate_core.bus import Delivered
from tollgate_core.contracts import (
    ChatRequestV1,
    ChatRequestV2,
    Contract,
    ErrorInfo,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    Usage,
)
from tollgate_core.errors import DependencyUnavailable
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

Script = Callable[[ChatRequestV1 | ChatRequestV2], list[Reply]]


def answer(*texts: str, stop: str = "end_turn") -> Script:
    def script(request: ChatRequestV1 | ChatRequestV2) -> list[Reply]:
        common: dict[str, Any] = {
            "request_id": request.request_id,
            "principal": request.principal,
            "model": request.model,
        }
        replies: list[Reply] = [ReplyChunkV1(seq=i, text=t, **common) for i, t in enumerate(texts)]
        replies.append(
            ReplyDoneV1(
                seq=len(texts),
                usage=Usage(input_tokens=7, output_tokens=len(texts)),
                stop_reason=stop,
                **common,
            )
        )
        return replies

    return script


def fail(type_: str, message: str, **details: object) -> Script:
    def script(request: ChatRequestV1 | ChatRequestV2) -> list[Reply]:
        error = ErrorInfo(type=type_, message=message, details=dict(details))
        return [
            ReplyErrorV1(
                request_id=request.request_id, principal=request.principal, seq=0, error=error
            )
        ]

    return script


class ScriptedPipeline:
    """A publisher standing in for meter + router: every request gets ``script``'s replies,
    each delivered twice (at-least-once) through the real dispatcher."""

    def __init__(self, dispatcher: ReplyDispatcher) -> None:
        self.dispatcher = dispatcher
        self.script: Script = answer("Hello", ", ", "world")
        self.requests: list[ChatRequestV1 | ChatRequestV2] = []
        self.down = False
        #: every reply delivered at once, as when they come in one fetch
        self.together = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        if self.down:
            raise DependencyUnavailable("kafka is down")
        assert topic == topics.REQUESTS and isinstance(event, ChatRequestV1 | ChatRequestV2)
        assert key == event.principal
        self.requests.append(event)
        task = asyncio.create_task(self._reply(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, request: ChatRequestV1 | ChatRequestV2) -> None:
        for offset, reply in enumerate(self.script(request)):
            if not self.together:
                await asyncio.sleep(0)
            for _ in range(2):
                await self.dispatcher(
                    Delivered(reply, topics.REPLIES, request.reply_to.partition, offset, None)
                )


class ModelPolicy(DevBearerAuthenticator):
    async def authorize_model(self, identity: Identity, model: str) -> None:
        if model != "tollgate-local":
            raise OpenAIError.forbidden(f"{model} is not allowed for you", "model_not_allowed")


class Edge:
    def __init__(self, router: httpx.AsyncBaseTransport | None = None) -> None:
        settings = StreamSettings(openai_reply_timeout_s=5)
        self.waiters = ReplyWaiters()
        self.pipeline = ScriptedPipeline(ReplyDispatcher(Subscriptions(), self.waiters))
        gateway = Gateway(
            settings, self.pipeline, ChannelOwnerAuthorizer(), reply_partitions=[2, 3]
        )
        catalog = RouterModelCatalog(
            "http://router.invalid",
            StaticModelCatalog(["tollgate-local", "other"]),
            transport=router or httpx.MockTransport(lambda _: httpx.Response(503)),
        )
        api = OpenAIApi(gateway, self.waiters, ModelPolicy(), catalog, reply_timeout_s=5)
        self.app = create_app(settings, Health(), gateway, Subscriptions(), api)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://edge"
        )

    def sdk(self, key: str = "sk-alice") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url="http://edge/v1", http_client=self.http(), max_retries=0
        )


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    yield Edge()


async def test_non_streaming_completion_through_the_sdk(edge: Edge) -> None:
    completion = await edge.sdk().chat.completions.create(
        model="tollgate-local",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        max_tokens=50,
    )
    [request] = edge.pipeline.requests
    assert completion.id == f"chatcmpl-{request.request_id}"
    assert completion.object == "chat.completion"
    assert completion.model == "tollgate-local"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello, world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)
    assert completion.usage.total_tokens == 10
    assert len(edge.waiters) == 0


async def test_the_request_enters_the_pipeline_as_an_openai_request(edge: Edge) -> None:
    await edge.sdk("sk-bob").chat.completions.create(
        model="tollgate-local",
        messages=[
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "part one"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "part two"},
        ],
        max_completion_tokens=64,
        temperature=0.5,
    )
    [request] = edge.pipeline.requests
    assert request.protocol == "openai"
    assert request.channel is None
    assert request.principal == "sk-bob"
    assert request.reply_to.topic == topics.REPLIES
    assert request.reply_to.partition in (2, 3)
    assert request.system == ("Rules.",)
    assert [(m.role, m.content[0].text) for m in request.messages] == [
        ("user", "part one"),
        ("assistant", "ok"),
        ("user", "part two"),
    ]
    assert (request.max_tokens, request.temperature) == (64, 0.5)


async def test_streaming_with_a_final_usage_chunk(edge: Edge) -> None:
    stream = await edge.sdk().chat.completions.create(
        model="tollgate-local",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world"
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "stop" and set(finishing[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    assert len(edge.waiters) == 0


async def test_streaming_without_usage_ends_with_done(edge: Edge) -> None:
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={
                "model": "tollgate-local",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in response.text


async def test_replies_that_arrived_together_go_out_in_one_write(edge: Edge) -> None:
    edge.pipeline.together = True
    body = json.dumps(
        {
            "model": "tollgate-local",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"authorization": "Bearer k", "content-type": "application/json"}
    sent = await asgi_messages(edge.app, "/v1/chat/completions", body, headers)
    writes = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert len(writes) == 1
    events = [e for e in writes[0].decode().split("\n\n") if e]
    assert len(events) == 1 + 3 + 1 + 1 + 1  # role, three texts, finish, usage, [DONE]
    assert '"role":"assistant"' in events[0] and events[-1] == "data: [DONE]"
    assert ['"content":"Hello"' in e for e in events[1:4]] == [True, False, False]
    assert '"finish_reason":"stop"' in events[4] and '"usage":{' in events[5]


async def asgi_messages(
    app: Any, path: str, body: bytes, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """One POST straight through the ASGI app (no client, no socket): every message the app
    sends. An HTTP client would see the bodies merged; the server writes each on its own."""
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("edge", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


async def test_length_stop_reason_maps_to_length(edge: Edge) -> None:
    edge.pipeline.script = answer("a", stop="max_tokens")
    completion = await edge.sdk().chat.completions.create(
        model="tollgate-local", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].finish_reason == "length"


async def test_missing_or_malformed_bearer_is_401(edge: Edge) -> None:
    async with edge.http() as client:
        for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
            response = await client.post(
                "/v1/chat/completions",
                headers=headers,
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            )
            assert response.status_code == 401
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
        response = await client.get("/v1/models")
        assert response.status_code == 401
    assert edge.pipeline.requests == []


async def test_sdk_sees_typed_errors(edge: Edge) -> None:
    client = edge.sdk()
    messages: Any = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.chat.completions.create(model="forbidden-model", messages=messages)
    assert denied.value.code == "model_not_allowed"
    assert edge.pipeline.requests == []

    edge.pipeline.script = fail("model_not_found", "unknown model 'nope'")
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="tollgate-local", messages=messages)
    assert missing.value.code == "model_not_found"
    assert missing.value.param == "model"

    edge.pipeline.script = fail("internal_error", "boom")
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="tollgate-local", messages=messages)
    assert len(edge.waiters) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_token_limit_is_429_with_retry_after(edge: Edge, stream: bool) -> None:
    edge.pipeline.script = fail(
        "token_limit_exceeded", "daily output tokens exhausted", window="24h", retry_after=41.2
    )
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={
                "model": "tollgate-local",
                "messages": [{"role": "user", "content": "x"}],
                "stream": stream,
            },
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"
    assert response.json() == {
        "error": {
            "message": "daily output tokens exhausted",
            "type": "rate_limit_error",
            "param": None,
            "code": "token_limit_exceeded",
        }
    }
    with pytest.raises(openai.RateLimitError):
        await edge.sdk().chat.completions.create(
            model="tollgate-local", messages=[{"role": "user", "content": "x"}]
        )


async def test_an_error_after_the_first_chunk_ends_the_stream_with_an_error_event(
    edge: Edge,
) -> None:
    def script(request: ChatRequestV1 | ChatRequestV2) -> list[Reply]:
        first = answer("partial")(request)[0]
        error = ErrorInfo(type="provider_throttled", message="slow down")
        return [
            first,
            ReplyErrorV1(
                request_id=request.request_id, principal=request.principal, seq=1, error=error
            ),
        ]

    edge.pipeline.script = script
    stream = await edge.sdk().chat.completions.create(
        model="tollgate-local", messages=[{"role": "user", "content": "x"}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="slow down"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "partial"
    assert len(edge.waiters) == 0


async def test_kafka_down_is_503_and_leaves_no_waiter(edge: Edge) -> None:
    edge.pipeline.down = True
    with pytest.raises(openai.InternalServerError) as exc:
        await edge.sdk().chat.completions.create(
            model="tollgate-local", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.status_code == 503
    assert len(edge.waiters) == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b'{"model":"m"}', "messages"),
        (b'{"model":"m","messages":[]}', "messages"),
        (b'{"model":"m","messages":[{"role":"tool","content":"x"}]}', "messages.0.tool_call_id"),
        (b'{"model":"m","messages":[{"role":"system","content":"x"}]}', "messages"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}', "n"),
    ],
)
async def test_bad_bodies_are_400_and_reach_no_topic(
    edge: Edge, body: bytes, param: str | None
) -> None:
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer k", "content-type": "application/json"},
            content=body,
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert edge.pipeline.requests == []


async def test_models_fall_back_to_the_configured_list(edge: Edge) -> None:
    models = await edge.sdk().models.list()
    assert [m.id for m in models.data] == ["tollgate-local", "other"]
    assert all(m.object == "model" for m in models.data)


async def test_models_come_from_the_router_when_it_answers() -> None:
    async def router_models(_: Any) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": "bedrock-claude", "owned_by": "bedrock"}]}
        )

    router = Starlette(routes=[Route("/v1/models", router_models)])
    edge = Edge(router=httpx.ASGITransport(app=router))
    models = await edge.sdk().models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [("bedrock-claude", "bedrock")]


def test_tls_needs_both_certificate_and_key() -> None:
    with pytest.raises(ValueError, match="together"):
        StreamSettings(tls_cert="/a.crt")  # type: ignore[arg-type]
    settings = StreamSettings(tls_cert="/a.crt", tls_key="/a.key")  # type: ignore[arg-type]
    assert settings.tls_cert is not None and settings.tls_key is not None


async def test_the_public_model_list_shows_no_pricing_groups_or_fallbacks() -> None:
    async def router_models(_: Any) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": "bedrock-claude",
                        "object": "model",
                        "created": 1700000000,
                        "owned_by": "bedrock",
                        "pricing": {"input_per_1k": "0.003"},
                        "groups": ["research"],
                        "fallbacks": ["internal-model"],
                        "provider": "bedrock",
                    }
                ],
            }
        )

    router = Starlette(routes=[Route("/v1/models", router_models)])
    edge = Edge(router=httpx.ASGITransport(app=router))
    async with edge.http() as client:
        body = (await client.get("/v1/models", headers={"authorization": "Bearer sk-alice"})).json()
    assert body["data"] == [
        {"id": "bedrock-claude", "object": "model", "created": 1700000000, "owned_by": "bedrock"}
    ]
