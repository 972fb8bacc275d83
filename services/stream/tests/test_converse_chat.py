"""The AppSync chat event in Converse shapes: content blocks and toolConfig in, tool calls
streamed out as contentBlockStart / contentBlockDelta with toolUse, as Bedrock does."""

from __future__ import annotations

import json

import pytest

from tollgate_core.contracts import (
    ImageContent,
    ReplyChunkV1,
    ReplyChunkV2,
    TextContent,
    ToolCallDelta,
    ToolChoice,
    ToolResultContent,
    ToolUseContent,
)
from tollgate_core.errors import RequestError
from tollgate_stream.chat import outbound_events, parse_inbound


def test_a_converse_shaped_tool_conversation_is_parsed() -> None:
    chat = parse_inbound(
        json.dumps(
            {
                "modelId": "claude",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"text": "Weather here?"},
                            {"image": {"format": "png", "source": {"bytes": "AAAA"}}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "toolUse": {
                                    "toolUseId": "t1",
                                    "name": "get_weather",
                                    "input": {"city": "Rome"},
                                }
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {
                                "toolResult": {
                                    "toolUseId": "t1",
                                    "content": [{"json": {"c": 21}}, {"text": " sunny"}],
                                    "status": "error",
                                }
                            }
                        ],
                    },
                ],
                "toolConfig": {
                    "tools": [
                        {
                            "toolSpec": {
                                "name": "get_weather",
                                "description": "Weather",
                                "inputSchema": {"json": {"type": "object"}},
                            }
                        }
                    ],
                    "toolChoice": {"any": {}},
                },
                "inferenceConfig": {"maxTokens": 64, "topP": 0.5, "stopSequences": ["END"]},
                "additionalModelRequestFields": {"top_k": 5},
            }
        )
    )
    user, assistant, result = chat.messages
    assert user.content == (
        TextContent(text="Weather here?"),
        ImageContent(media_type="image/png", data="AAAA"),
    )
    assert assistant.content == (
        ToolUseContent(id="t1", name="get_weather", input={"city": "Rome"}),
    )
    assert result.content == (
        ToolResultContent(tool_use_id="t1", content='{"c":21} sunny', is_error=True),
    )
    assert [t.name for t in chat.tools] == ["get_weather"]
    assert chat.tool_choice == ToolChoice(mode="required")
    assert (chat.max_tokens, chat.top_p, chat.stop, chat.extras) == (
        64,
        0.5,
        ("END",),
        {"top_k": 5},
    )


def test_the_sample_clients_plain_event_still_parses() -> None:
    chat = parse_inbound('{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}')
    assert chat.messages[0].content == (TextContent(text="Hi"),)
    assert chat.tools == () and chat.extras == {}


@pytest.mark.parametrize(
    "content",
    [
        [{"document": {"name": "x"}}],
        [{"image": {"format": "bmp", "source": {"bytes": "AAAA"}}}],
        [{"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k"}}}}],
    ],
)
def test_content_it_cannot_carry_is_a_validation_error(content: list[object]) -> None:
    with pytest.raises(RequestError, match="invalid chat event"):
        parse_inbound(json.dumps({"messages": [{"role": "user", "content": content}]}))


def test_a_tool_call_goes_out_as_bedrock_streams_it() -> None:
    common = {"request_id": "r", "principal": "p", "conversation_id": "c"}
    start = ReplyChunkV2(
        seq=1,
        tool_call=ToolCallDelta(index=0, block=1, id="t1", name="get_weather", arguments='{"ci'),
        **common,
    )
    more = ReplyChunkV2(
        seq=2, tool_call=ToolCallDelta(index=0, block=1, arguments='ty":1}'), **common
    )
    events = outbound_events(start) + outbound_events(more)
    assert events == [
        {
            "contentBlockStart": {
                "start": {"toolUse": {"toolUseId": "t1", "name": "get_weather"}},
                "contentBlockIndex": 1,
            },
            "requestId": "r",
            "conversationId": "c",
        },
        {
            "contentBlockDelta": {"delta": {"toolUse": {"input": '{"ci'}}, "contentBlockIndex": 1},
            "requestId": "r",
            "conversationId": "c",
        },
        {
            "contentBlockDelta": {
                "delta": {"toolUse": {"input": 'ty":1}'}},
                "contentBlockIndex": 1,
            },
            "requestId": "r",
            "conversationId": "c",
        },
    ]
    text_v1 = outbound_events(ReplyChunkV1(seq=0, text="Hi", **common))
    text_v2 = outbound_events(ReplyChunkV2(seq=0, text="Hi", **common))
    assert text_v1 == text_v2 and "messageStart" in text_v1[0]
