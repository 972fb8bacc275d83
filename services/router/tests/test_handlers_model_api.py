"""The router's side of the model API: a v2 request's answer is v2 chunks with tool-call
deltas, a parameter the model's provider cannot take is a typed error before any call, and a
v1 request is answered exactly as before."""

from __future__ import annotations

from tollgate_core import topics
from tollgate_core.bus import Delivered
from tollgate_core.contracts import (
    AdmissionV2,
    ChatMessageV2,
    ChatRequestV2,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    TextContent,
    ToolSpec,
)
from tollgate_router.errors import ProviderUnavailable
from tollgate_router.streaming import Coalescing
from tollgate_router.testing import FakeToolCall, ScriptedProvider, Step

from .test_handlers import Rig, admission

TOOL = ToolSpec(name="lookup", input_schema={"type": "object"})


def admission_v2(model: str, **fields: object) -> Delivered[AdmissionV2]:
    request = ChatRequestV2(
        principal="alice",
        model=model,
        messages=(ChatMessageV2(role="user", content=(TextContent(text="find it"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=4),
        **fields,  # type: ignore[arg-type]
    )
    event = AdmissionV2(request=request, reserved_input_tokens=1, reserved_output_tokens=50)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key="alice")


async def test_a_tool_call_streams_as_v2_chunks_after_the_text_and_ends_with_tool_use() -> None:
    call = FakeToolCall("call_9", "lookup", '{"q": "keys"}', pieces=2)
    rig = Rig(ScriptedProvider("cloud", [Step(chunks=("On it.",), tool_calls=(call,))]))
    await rig.handler(admission_v2("priced", tools=(TOOL,)))
    replies = rig.replies()
    assert all(isinstance(r, ReplyChunkV2) for r in replies[:-1])
    text, start, *pieces, done = replies
    assert isinstance(text, ReplyChunkV2) and text.text == "On it." and text.tool_call is None
    assert isinstance(start, ReplyChunkV2) and start.tool_call is not None
    assert (start.tool_call.id, start.tool_call.name, start.tool_call.index) == (
        "call_9",
        "lookup",
        0,
    )
    assert start.tool_call.block == 1  # the text is block 0
    arguments = "".join(p.tool_call.arguments for p in pieces)  # type: ignore[attr-defined]
    assert arguments == '{"q": "keys"}'
    assert [r.seq for r in replies] == list(range(len(replies)))  # type: ignore[attr-defined]
    assert isinstance(done, ReplyDoneV1) and done.stop_reason == "tool_use"
    [sent] = rig.cloud.calls
    assert sent.tools == (TOOL,)
    assert rig.one_usage().usage == done.usage


async def test_a_parameter_the_models_provider_cannot_take_is_a_typed_error_and_free() -> None:
    rig = Rig()
    await rig.handler(admission_v2("tollgate-local", tools=(TOOL,)))
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "validation_error"
    assert reply.error.details["param"] == "tools"
    assert "tollgate-local" in reply.error.message
    assert rig.one_usage().usage.total_tokens == 0
    assert rig.one_log().error_type == "validation_error"


async def test_a_fallback_that_cannot_take_the_request_is_skipped_not_blamed() -> None:
    """ "priced" falls back to the local model, which cannot take tools: the outage of the
    primary is what the client hears about, never a validation error."""
    down = ProviderUnavailable("down")
    rig = Rig(ScriptedProvider("cloud", [Step(error=down)]))
    await rig.handler(admission_v2("priced", tools=(TOOL,)))
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "provider_unavailable"


async def test_a_v1_request_is_still_answered_in_v1_chunks() -> None:
    rig = Rig()
    await rig.handler(admission())
    assert {type(r) for r in rig.replies()[:-1]} == {ReplyChunkV1}


async def test_argument_pieces_are_coalesced_like_text_and_calls_stay_apart() -> None:
    calls = (
        FakeToolCall("c1", "lookup", '{"q": "' + "x" * 40 + '"}', pieces=20),
        FakeToolCall("c2", "lookup", '{"q": "y"}', pieces=5),
    )
    rig = Rig(
        ScriptedProvider("cloud", [Step(chunks=(), tool_calls=calls)]),
        coalescing=Coalescing(delay_s=60, max_chars=512),
    )
    await rig.handler(admission_v2("priced", tools=(TOOL,)))
    chunks = [r for r in rig.replies() if isinstance(r, ReplyChunkV2)]
    assert all(c.tool_call is not None for c in chunks)
    by_call: dict[int, str] = {}
    for c in chunks:
        assert c.tool_call is not None
        by_call[c.tool_call.index] = by_call.get(c.tool_call.index, "") + c.tool_call.arguments
    assert by_call == {0: calls[0].arguments, 1: calls[1].arguments}
    # per call: its start, its first piece at once, the rest in one chunk
    assert len(chunks) <= 6 < len(calls[0].parts()) + len(calls[1].parts())
    assert [c.tool_call.block for c in chunks if c.tool_call.id] == [0, 1]  # type: ignore[union-attr]
