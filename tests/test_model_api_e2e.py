"""The official ``openai`` SDK runs an agent's tool-calling round trip through the whole
gateway (edge, meter and router as processes) to a provider speaking OpenAI's wire format."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.appsync_client import connect, dev_token, http_publish
from tests.ledger import wait_settled
from tests.test_openai_e2e import sdk
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack
from tollgate_router.testing import FakeProviderServer, FakeToolCall, Scenario

pytestmark = pytest.mark.e2e

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def streamed(client: openai.AsyncOpenAI, messages: list[Any]) -> list[Any]:
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    return [chunk async for chunk in stream]


async def test_a_tool_calling_round_trip_through_the_whole_gateway(
    stack: Stack, fake_upstream: FakeProviderServer, embedded_postgres: EmbeddedPostgres
) -> None:
    fake_upstream.received.clear()
    fake_upstream.script = [
        Scenario(
            chunks=("Let me look.",),
            tool_calls=(FakeToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
            input_tokens=61,
        ),
        Scenario(chunks=("It is", " 21 C", " in Paris."), input_tokens=90),
    ]
    question = {"role": "user", "content": "What is the weather in Paris?"}
    async with await sdk(stack, "ivy", ("premium",)) as client:
        first = await streamed(client, [question])
        deltas = [d for c in first if c.choices for d in c.choices[0].delta.tool_calls or ()]
        assert deltas[0].id == "call_1" and deltas[0].function.name == "get_weather"
        arguments = "".join(d.function.arguments or "" for d in deltas)
        assert json.loads(arguments) == {"city": "Paris"}
        assert [c.choices[0].finish_reason for c in first if c.choices][-1] == "tool_calls"
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        second = await streamed(
            client,
            [
                question,
                {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
            ],
        )
    text = "".join(c.choices[0].delta.content or "" for c in second if c.choices)
    assert text == "It is 21 C in Paris."
    assert [c.choices[0].finish_reason for c in second if c.choices][-1] == "stop"

    asked, answered = (r.body for r in fake_upstream.received)
    assert asked["tools"][0]["function"]["name"] == "get_weather"
    assert answered["messages"][-2:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
    ]
    # settled at what the provider reported, tool definitions and calls included
    for chunks, input_tokens, output_tokens in ((first, 61, 1), (second, 90, 3)):
        usage = chunks[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (input_tokens, output_tokens)
        request_id = chunks[0].id.removeprefix("chatcmpl-")
        assert await wait_settled(embedded_postgres.url, request_id) == (
            "settled",
            input_tokens,
            output_tokens,
            "ivy",
        )


async def test_a_parameter_the_models_provider_cannot_take_is_a_typed_400(stack: Stack) -> None:
    async with await sdk(stack, "ivy") as client:
        with pytest.raises(openai.BadRequestError) as exc:
            await client.chat.completions.create(
                model="tollgate-local",
                messages=[{"role": "user", "content": "weather?"}],
                tools=TOOLS,
            )
    assert exc.value.param == "tools"
    assert "tollgate-local" in exc.value.message


async def test_an_appsync_client_gets_the_tool_call_as_bedrock_streams_it(
    stack: Stack, fake_upstream: FakeProviderServer, embedded_postgres: EmbeddedPostgres
) -> None:
    fake_upstream.received.clear()
    fake_upstream.script = [
        Scenario(
            chunks=("Checking.",),
            tool_calls=(FakeToolCall("tu_1", "get_weather", '{"city": "Oslo"}'),),
            input_tokens=44,
        )
    ]
    event = {
        "modelId": "fake-gpt",
        "conversationId": "trip",
        "messages": [{"role": "user", "content": [{"text": "Weather in Oslo?"}]}],
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "description": "Current weather in a city",
                        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]},
                    }
                }
            ],
            "toolChoice": {"auto": {}},
        },
        "inferenceConfig": {"maxTokens": 200, "stopSequences": ["END"]},
    }
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), "jude", ("premium",))
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", "/Outbound-Messages/jude")
        published = await http_publish(edge, token, "/Inbound-Messages/jude", json.dumps(event))
        request_id = published.json()["successful"][0]["identifier"]
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            async for received in socket.events("s"):
                events.append(received)
                if "metadata" in received or "error" in received:
                    break
    [start] = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start == {
        "start": {"toolUse": {"toolUseId": "tu_1", "name": "get_weather"}},
        "contentBlockIndex": 1,
    }
    pieces = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert json.loads("".join(pieces)) == {"city": "Oslo"}
    assert {"stopReason": "tool_use"} in [e.get("messageStop") for e in events]
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 44
    [asked] = fake_upstream.received
    assert asked.body["tools"][0]["function"]["name"] == "get_weather"
    assert (asked.body["tool_choice"], asked.body["stop"]) == ("auto", ["END"])
    settled = await wait_settled(embedded_postgres.url, request_id)
    assert settled == ("settled", 44, 1, "jude")
