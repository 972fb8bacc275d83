"""The v2 request and reply contracts, and how they live beside v1 during an upgrade."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tollgate_core.bus.codec import Decoder, encode
from tollgate_core.contracts import (
    ChatMessage,
    ChatMessageV2,
    ChatRequestV1,
    ChatRequestV2,
    ImageContent,
    ReplyChunkV2,
    ReplyTo,
    ResponseFormat,
    TextBlock,
    TextContent,
    ToolCallDelta,
    ToolChoice,
    ToolUseContent,
)
from tollgate_core.errors import UnsupportedSchemaError


def v1() -> ChatRequestV1:
    return ChatRequestV1(
        principal="alice",
        model="m",
        messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),),
        temperature=0.3,
        reply_to=ReplyTo(topic="t", partition=1),
    )


def test_a_request_v1_can_carry_travels_as_v1_and_anything_more_as_v2() -> None:
    original = v1()
    upgraded = ChatRequestV2.of(original)
    assert upgraded.messages[0].content == (TextContent(text="hi"),)
    assert upgraded.to_wire() == original
    for change in (
        {"seed": 0},
        {"top_p": 0.0},
        {"stop": ("END",)},
        {"extras": {"top_k": 5}},
        {"tool_choice": ToolChoice(mode="none")},
        {"response_format": ResponseFormat(type="json_object")},
        {"messages": (ChatMessageV2(role="user", content=(ImageContent(url="https://x/a.png"),)),)},
    ):
        wire = upgraded.model_copy(update=change).to_wire()
        assert isinstance(wire, ChatRequestV2), change


def test_a_consumer_of_the_previous_release_refuses_v2_by_schema_not_by_guessing() -> None:
    original = v1()
    request = ChatRequestV2.of(original).model_copy(update={"seed": 1})
    old = Decoder.of(ChatRequestV1)
    with pytest.raises(UnsupportedSchemaError):
        old.decode(encode(request), request.SCHEMA)
    new = Decoder.of(ChatRequestV1, ChatRequestV2)
    assert new.decode(encode(request), request.SCHEMA) == request
    assert new.decode(encode(original), ChatRequestV1.SCHEMA) == original


def test_content_blocks_are_validated() -> None:
    with pytest.raises(ValidationError, match="exactly one of data"):
        ImageContent(media_type="image/png")
    with pytest.raises(ValidationError, match="media_type"):
        ImageContent(data="AAAA")
    with pytest.raises(ValidationError):
        ChatMessageV2(role="user", content=())
    with pytest.raises(ValidationError, match="names a tool"):
        ToolChoice(mode="tool")
    with pytest.raises(ValidationError, match="json_schema"):
        ResponseFormat(type="json_schema")
    block = ToolUseContent(id="c", name="f", input={"a": [1, {"b": None}]})
    assert ChatMessageV2.model_validate_json(
        ChatMessageV2(role="assistant", content=(block,)).model_dump_json()
    ).content == (block,)


def test_a_tool_call_chunk_round_trips() -> None:
    chunk = ReplyChunkV2(
        request_id="r",
        principal="p",
        seq=3,
        tool_call=ToolCallDelta(index=0, block=1, id="c", name="f", arguments='{"a"'),
    )
    assert ReplyChunkV2.model_validate_json(encode(chunk)) == chunk
    assert chunk.SCHEMA == "tollgate.reply.v2"
