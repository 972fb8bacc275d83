from __future__ import annotations

import pytest

from tollgate_core.contracts import ErrorInfo, ReplyChunkV1, ReplyDoneV1, ReplyErrorV1, Usage
from tollgate_core.errors import RequestError
from tollgate_stream.chat import outbound_events, parse_inbound


def test_parses_the_aws_sample_inbound_shape() -> None:
    chat = parse_inbound(
        '{"messages":[{"role":"user","content":[{"text":"Hi"}]}],'
        '"modelId":"m","conversationId":"c","system":[{"text":"be kind"}]}'
    )
    assert chat.model_id == "m" and chat.conversation_id == "c"
    assert chat.messages[0].content[0].text == "Hi" and chat.system == ("be kind",)


@pytest.mark.parametrize(
    "event",
    [
        '{"messages": []}',
        '{"messages":[{"role":"wizard","content":[{"text":"x"}]}]}',
        '{"conversationId":"c"}',
        '{"messages":[{"role":"user","content":[{"text":"x"}]}],"maxTokens":0}',
    ],
)
def test_invalid_chat_events_are_request_errors(event: str) -> None:
    with pytest.raises(RequestError):
        parse_inbound(event)


def test_outbound_events_are_converse_stream_shaped() -> None:
    first = outbound_events(
        ReplyChunkV1(request_id="r", principal="p", seq=0, text="He", conversation_id="c")
    )
    assert first == [
        {"messageStart": {"role": "assistant"}, "requestId": "r", "conversationId": "c"},
        {
            "contentBlockDelta": {"delta": {"text": "He"}, "contentBlockIndex": 0},
            "requestId": "r",
            "conversationId": "c",
        },
    ]
    done = outbound_events(
        ReplyDoneV1(
            request_id="r",
            principal="p",
            seq=1,
            usage=Usage(input_tokens=2, output_tokens=3),
            latency_ms=9,
        )
    )
    assert done[0] == {"messageStop": {"stopReason": "end_turn"}, "requestId": "r"}
    assert done[1]["metadata"] == {
        "usage": {"inputTokens": 2, "outputTokens": 3, "totalTokens": 5},
        "metrics": {"latencyMs": 9},
    }
    [error] = outbound_events(
        ReplyErrorV1(
            request_id="r",
            principal="p",
            seq=0,
            error=ErrorInfo(type="provider_throttled", message="m"),
        )
    )
    assert error == {
        "error": {"type": "provider_throttled", "message": "m", "requestId": "r", "details": {}}
    }
