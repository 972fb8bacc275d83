"""Tools, images, structured output and sampling parameters on each provider's own wire
format, against the local fakes of the three APIs (Bedrock's in event-stream encoding)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.session import Session

from tollgate_core.contracts import (
    ChatMessageV2,
    ImageContent,
    ResponseFormat,
    TextContent,
    ToolChoice,
    ToolResultContent,
    ToolSpec,
    ToolUseContent,
)
from tollgate_router.errors import InvalidProviderRequest
from tollgate_router.providers.anthropic import AnthropicProvider
from tollgate_router.providers.base import (
    Finished,
    Provider,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
)
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.local import LocalProvider
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.providers.params import fit
from tollgate_router.testing import FakeProviderServer, FakeToolCall, Scenario

PNG = (  # one pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)
CALLS = (
    FakeToolCall("call_1", "get_weather", '{"city": "Paris"}'),
    FakeToolCall("call_2", "get_weather", '{"city": "Oslo"}'),
)


def agent_request(**changes: Any) -> ProviderRequest:
    """A second agent turn: the question with an image, the model's tool call, its result."""
    fields: dict[str, Any] = {
        "model": "m",
        "system": ("be brief",),
        "messages": (
            ChatMessageV2(
                role="user",
                content=(
                    TextContent(text="Weather where this photo was taken?"),
                    ImageContent(media_type="image/png", data=PNG),
                ),
            ),
            ChatMessageV2(
                role="assistant",
                content=(ToolUseContent(id="call_0", name="get_weather", input={"city": "Rome"}),),
            ),
            ChatMessageV2(
                role="user",
                content=(ToolResultContent(tool_use_id="call_0", content="21 C, sunny"),),
            ),
        ),
        "max_tokens": 100,
        "tools": (WEATHER,),
        "tool_choice": ToolChoice(mode="required"),
        "stop": ("END",),
        "top_p": 0.9,
        "temperature": 0.1,
    }
    return ProviderRequest(**{**fields, **changes})


def session() -> Session:
    s = Session()
    s.set_credentials("AKIDTEST", "secret-test")
    return s


def make(kind: str, server: FakeProviderServer, client: httpx.AsyncClient) -> Provider:
    if kind == "openai":
        return OpenAIProvider(client, base_url=server.url + "/v1")
    if kind == "anthropic":
        return AnthropicProvider(client, base_url=server.url)
    return BedrockProvider(client, region="us-east-1", endpoint_url=server.url, session=session())


async def run(provider: Provider, request: ProviderRequest) -> list[object]:
    return [e async for e in provider.stream(request)]


def calls_of(events: list[object]) -> list[dict[str, str]]:
    """Tool calls put together from their deltas, as a client would."""
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if isinstance(e, ToolUseDelta):
            call = calls.setdefault(e.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = e.id or call["id"]
            call["name"] = e.name or call["name"]
            call["arguments"] += e.arguments
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("kind", ["openai", "anthropic", "bedrock"])
async def test_a_streamed_tool_call_is_put_together_on_every_provider(
    kind: str, fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake_server.script = [Scenario(chunks=("Let me check.",), tool_calls=CALLS)]
    events = await run(make(kind, fake_server, http_client), agent_request(top_p=None))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me check."
    assert calls_of(events) == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    ]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.stop_reason == "tool_use"
    assert finished.usage.input_tokens == 7


async def test_openai_wire_format(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fmt = ResponseFormat(type="json_schema", name="weather", json_schema={"type": "object"})
    request = agent_request(seed=7, response_format=fmt, extras={"logit_bias": {"50256": -100}})
    await run(make("openai", fake_server, http_client), request)
    body = fake_server.received[0].body
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this photo was taken?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "21 C, sunny"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER.input_schema,
            },
        }
    ]
    assert body["tool_choice"] == "required"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}},
    }
    assert (body["stop"], body["top_p"], body["seed"]) == (["END"], 0.9, 7)
    assert body["logit_bias"] == {"50256": -100}
    assert body["stream_options"] == {"include_usage": True}


async def test_anthropic_wire_format(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    url_image = ChatMessageV2(
        role="user", content=(ImageContent(url="https://example.com/a.png"), TextContent(text="?"))
    )
    request = agent_request(tool_choice=ToolChoice(mode="tool", name="get_weather"))
    request = agent_request(
        messages=(
            *request.messages,
            ChatMessageV2(role="assistant", content=(TextContent(text="ok"),)),
            url_image,
        ),
        tool_choice=ToolChoice(mode="tool", name="get_weather"),
    )
    await run(make("anthropic", fake_server, http_client), request)
    body = fake_server.received[0].body
    user, assistant, result, _, url_turn = body["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"city": "Rome"}}
    ]
    assert result["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "call_0",
            "content": "21 C, sunny",
            "is_error": False,
        }
    ]
    assert url_turn["content"][0] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/a.png"},
    }
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER.input_schema,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert (body["stop_sequences"], body["top_p"], body["system"]) == (["END"], 0.9, "be brief")


async def test_bedrock_wire_format(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    error_result = ChatMessageV2(
        role="user",
        content=(ToolResultContent(tool_use_id="call_0", content="timeout", is_error=True),),
    )
    request = agent_request(extras={"top_k": 40})
    request = agent_request(messages=(*request.messages[:2], error_result), extras={"top_k": 40})
    await run(make("bedrock", fake_server, http_client), request)
    body = fake_server.received[0].body
    user, assistant, result = body["messages"]
    assert user["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert assistant["content"] == [
        {"toolUse": {"toolUseId": "call_0", "name": "get_weather", "input": {"city": "Rome"}}}
    ]
    assert result["content"] == [
        {
            "toolResult": {
                "toolUseId": "call_0",
                "content": [{"text": "timeout"}],
                "status": "error",
            }
        }
    ]
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "inputSchema": {"json": WEATHER.input_schema},
                }
            }
        ],
        "toolChoice": {"any": {}},
    }
    assert body["inferenceConfig"] == {
        "maxTokens": 100,
        "temperature": 0.1,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert body["additionalModelRequestFields"] == {"top_k": 40}


async def test_boto3_reads_the_fakes_tool_call_stream(fake_server: FakeProviderServer) -> None:
    """The Bedrock fake's tool-call frames are what boto3's own parser expects."""
    fake_server.script = [Scenario(chunks=("ok",), tool_calls=CALLS[:1])]

    def call() -> list[dict[str, Any]]:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=fake_server.url,
            aws_access_key_id="AKIDTEST",
            aws_secret_access_key="secret-test",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )
        response = client.converse_stream(
            modelId="m",
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
            toolConfig={
                "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {}}}}]
            },
        )
        return list(response["stream"])

    events = await asyncio.to_thread(call)
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert starts == [
        {
            "start": {"toolUse": {"toolUseId": "call_1", "name": "get_weather"}},
            "contentBlockIndex": 1,
        }
    ]
    pieces = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert {"messageStop": {"stopReason": "tool_use"}} in events


@pytest.mark.parametrize(
    ("kind", "changes", "param"),
    [
        ("bedrock", {"seed": 3}, "seed"),
        ("bedrock", {"response_format": ResponseFormat(type="json_object")}, "response_format"),
        ("bedrock", {"tool_choice": ToolChoice(mode="none")}, "tool_choice"),
        (
            "bedrock",
            {
                "messages": (
                    ChatMessageV2(role="user", content=(ImageContent(url="https://x/y.png"),)),
                )
            },
            "image_url",
        ),
        ("anthropic", {"seed": 3}, "seed"),
        ("anthropic", {"response_format": ResponseFormat(type="json_object")}, "response_format"),
        ("local", {}, "tools"),
    ],
)
async def test_what_a_provider_cannot_take_is_refused_naming_the_parameter(
    kind: str,
    changes: dict[str, Any],
    param: str,
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
) -> None:
    provider: Provider = (
        LocalProvider(time_to_first_token_ms=0, tokens_per_second=1000, output_tokens=3)
        if kind == "local"
        else make(kind, fake_server, http_client)
    )
    with pytest.raises(InvalidProviderRequest) as exc:
        fit(agent_request(**changes), provider, model="the-model")
    assert exc.value.error_type == "validation_error"
    assert exc.value.details["param"] == param
    assert "the-model" in exc.value.message
    assert fake_server.received == []


async def test_the_catalog_may_drop_what_a_provider_cannot_take(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider = make("bedrock", fake_server, http_client)
    fitted = fit(
        agent_request(seed=3, response_format=ResponseFormat(type="json_object")),
        provider,
        model="m",
        drop=("seed", "response_format"),
    )
    assert fitted.seed is None and fitted.response_format is None
    await run(provider, fitted)
    assert "seed" not in json.dumps(fake_server.received[0].body)
    # an image cannot be dropped: the question would change
    url_image = ChatMessageV2(role="user", content=(ImageContent(url="https://x/y.png"),))
    with pytest.raises(InvalidProviderRequest):
        fit(agent_request(messages=(url_image,)), provider, model="m", drop=("seed",))


async def test_extras_cannot_replace_what_tollgate_sets(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidProviderRequest) as exc:
        await run(make("openai", fake_server, http_client), agent_request(extras={"model": "x"}))
    assert exc.value.details["param"] == "extras"
    assert fake_server.received == []
