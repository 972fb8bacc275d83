"""Tools, tool calls, images, structured output and sampling parameters through the OpenAI
endpoint, driven by the official SDK, with the pipeline scripted (see test_openai_api)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tollgate_core.contracts import (
    ChatRequestV1,
    ChatRequestV2,
    ErrorInfo,
    ImageContent,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    ResponseFormat,
    TextContent,
    ToolCallDelta,
    ToolChoice,
    ToolResultContent,
    ToolUseContent,
    Usage,
)
from tollgate_stream.replies import Reply

from .test_openai_api import Edge, Script

PNG = (  # one pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def tool_call_answer(*calls: tuple[str, str, str]) -> Script:
    """Text, then each (id, name, arguments) call streamed in two pieces, then tool_use."""

    def script(request: ChatRequestV1 | ChatRequestV2) -> list[Reply]:
        common: dict[str, Any] = {
            "request_id": request.request_id,
            "principal": request.principal,
            "model": request.model,
        }
        replies: list[Reply] = [ReplyChunkV2(seq=0, text="Checking.", **common)]
        for index, (id_, name, arguments) in enumerate(calls):
            half = len(arguments) // 2
            for piece, first in ((arguments[:half], True), (arguments[half:], False)):
                delta = ToolCallDelta(
                    index=index,
                    block=index + 1,
                    id=id_ if first else None,
                    name=name if first else None,
                    arguments=piece,
                )
                replies.append(ReplyChunkV2(seq=len(replies), tool_call=delta, **common))
        usage = Usage(input_tokens=40, output_tokens=12)
        replies.append(ReplyDoneV1(seq=len(replies), usage=usage, stop_reason="tool_use", **common))
        return replies

    return script


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    yield Edge()


async def test_a_tool_conversation_enters_the_pipeline_in_the_contracts_terms(edge: Edge) -> None:
    edge.pipeline.script = tool_call_answer(("call_2", "get_weather", '{"city":"Oslo"}'))
    await edge.sdk().chat.completions.create(
        model="tollgate-local",
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
            {"role": "user", "content": "And in Oslo?"},
        ],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}},
        },
        stop=["END"],
        temperature=0.2,
        top_p=0.5,
        seed=11,
        extra_body={"provider_extras": {"top_k": 40}},
    )
    [request] = edge.pipeline.requests
    assert isinstance(request, ChatRequestV2)
    user, assistant, results = request.messages
    assert user.content == (
        TextContent(text="Weather here?"),
        ImageContent(media_type="image/png", data=PNG),
    )
    assert assistant.content == (
        ToolUseContent(id="call_1", name="get_weather", input={"city": "Rome"}),
    )
    # the tool result and the next user text are one user turn
    assert results.content == (
        ToolResultContent(tool_use_id="call_1", content="21 C"),
        TextContent(text="And in Oslo?"),
    )
    assert request.system == ("be brief",)
    assert [t.name for t in request.tools] == ["get_weather"]
    assert request.tool_choice == ToolChoice(mode="tool", name="get_weather")
    assert request.response_format == ResponseFormat(
        type="json_schema", name="w", json_schema={"type": "object"}
    )
    assert (request.stop, request.temperature, request.top_p, request.seed) == (
        ("END",),
        0.2,
        0.5,
        11,
    )
    assert request.extras == {"top_k": 40}


async def test_plain_chat_still_enters_the_pipeline_as_v1(edge: Edge) -> None:
    await edge.sdk().chat.completions.create(
        model="tollgate-local", messages=[{"role": "user", "content": "hi"}], temperature=1
    )
    [request] = edge.pipeline.requests
    assert type(request) is ChatRequestV1


async def test_tool_calls_come_back_whole_without_streaming(edge: Edge) -> None:
    edge.pipeline.script = tool_call_answer(
        ("call_1", "get_weather", '{"city":"Paris"}'), ("call_2", "get_weather", "{}")
    )
    completion = await edge.sdk().chat.completions.create(
        model="tollgate-local", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_1", "get_weather", '{"city":"Paris"}'),
        ("call_2", "get_weather", "{}"),
    ]
    assert completion.usage is not None and completion.usage.prompt_tokens == 40


async def test_tool_calls_stream_as_indexed_deltas(edge: Edge) -> None:
    edge.pipeline.script = tool_call_answer(("call_1", "get_weather", '{"city":"Paris"}'))
    stream = await edge.sdk().chat.completions.create(
        model="tollgate-local",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        stream=True,
    )
    chunks = [c async for c in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.id, d.type) for d in deltas] == [
        (0, "call_1", "function"),
        (0, None, None),
    ]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True, "x": 1}}]},
            "tools.0.function.x",
        ),
        ({"messages": [{"role": "user", "content": "x", "audio": {}}]}, "messages.0.audio"),
    ],
)
async def test_unknown_fields_are_refused_in_openais_shape_and_reach_no_topic(
    edge: Edge, body: dict[str, Any], param: str
) -> None:
    request = {"model": "tollgate-local", "messages": [{"role": "user", "content": "x"}], **body}
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions", json=request, headers={"authorization": "Bearer sk-a"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        param,
        "unknown_parameter",
    )
    assert edge.pipeline.requests == []


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
            "messages.0.content.0",
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}
                ],
            },
            "messages.0.content.0",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            },
            "messages.0.tool_calls.0.function.arguments",
        ),
    ],
)
async def test_bad_content_is_a_400_naming_it(
    edge: Edge, message: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await edge.sdk().chat.completions.create(
            model="tollgate-local",
            messages=[message, {"role": "user", "content": "x"}],  # type: ignore[list-item]
        )
    assert exc.value.param == param
    assert edge.pipeline.requests == []


async def test_a_parameter_the_provider_cannot_take_is_a_400_naming_it(edge: Edge) -> None:
    def refuse(request: ChatRequestV1 | ChatRequestV2) -> list[Reply]:
        error = ErrorInfo(
            type="validation_error",
            message="seed is not supported by model 'claude' (provider anthropic)",
            details={"param": "seed"},
        )
        return [
            ReplyErrorV1(
                request_id=request.request_id, principal=request.principal, seq=0, error=error
            )
        ]

    edge.pipeline.script = refuse
    with pytest.raises(openai.BadRequestError) as exc:
        await edge.sdk().chat.completions.create(
            model="tollgate-local", messages=[{"role": "user", "content": "x"}], seed=1
        )
    assert exc.value.param == "seed" and "seed is not supported" in exc.value.message
