from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import TypeAdapter, ValidationError

from tollgate_core.contracts import (
    REPLY_SCHEMA,
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ErrorInfo,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    ReplyV1,
    RequestLogV1,
    TextBlock,
    Usage,
    UsageRecordV1,
    utcnow,
)


def make_request(**overrides: object) -> ChatRequestV1:
    fields: dict[str, object] = {
        "principal": "alice",
        "groups": ("staff",),
        "messages": (ChatMessage(role="user", content=(TextBlock(text="hi"),)),),
        "reply_to": ReplyTo(topic="tollgate.replies", partition=3),
        "channel": "/Outbound-Messages/alice",
        "conversation_id": "c-1",
    }
    fields.update(overrides)
    return ChatRequestV1.model_validate(fields)


@pytest.mark.parametrize(
    "event",
    [
        make_request(),
        AdmissionV1(request=make_request(), reserved_input_tokens=5, reserved_output_tokens=100),
        UsageRecordV1(
            request_id="r",
            principal="alice",
            model="m",
            provider="local",
            usage=Usage(input_tokens=3, output_tokens=4),
            cost_usd=Decimal("0.000123"),
        ),
        RequestLogV1(
            request_id="r",
            principal="alice",
            model="m",
            provider="local",
            status="ok",
            input_tokens=3,
            output_tokens=4,
            latency_ms=12,
            time_to_first_token_ms=5,
            started_at=utcnow(),
        ),
    ],
)
def test_round_trip(event: ChatRequestV1 | AdmissionV1 | UsageRecordV1 | RequestLogV1) -> None:
    decoded = type(event).model_validate_json(event.model_dump_json())
    assert decoded == event


def test_replies_round_trip_through_the_discriminated_union() -> None:
    adapter: TypeAdapter[ReplyChunkV1 | ReplyDoneV1 | ReplyErrorV1] = TypeAdapter(ReplyV1)
    replies = [
        ReplyChunkV1(request_id="r", principal="a", seq=0, text="Hel"),
        ReplyDoneV1(request_id="r", principal="a", seq=1, usage=Usage(input_tokens=1)),
        ReplyErrorV1(
            request_id="r",
            principal="a",
            seq=2,
            error=ErrorInfo(type="provider_throttled", message="slow down", retriable=True),
        ),
    ]
    for reply in replies:
        assert reply.SCHEMA == REPLY_SCHEMA
        assert adapter.validate_json(reply.model_dump_json()) == reply


def test_each_contract_names_a_versioned_schema() -> None:
    schemas = {
        c.SCHEMA for c in (ChatRequestV1, AdmissionV1, UsageRecordV1, RequestLogV1, ReplyChunkV1)
    }
    assert all(s.startswith("tollgate.") and s.endswith(".v1") for s in schemas)
    assert len(schemas) == 5


def test_unknown_fields_are_ignored_within_a_version() -> None:
    raw = make_request().model_dump(mode="json") | {"added_in_a_later_minor": 1}
    assert ChatRequestV1.model_validate(raw) == make_request(
        request_id=raw["request_id"], created_at=raw["created_at"]
    )


def test_contracts_are_frozen_and_validated() -> None:
    request = make_request()
    with pytest.raises(ValidationError):
        request.principal = "mallory"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        make_request(reply_to={"topic": "t", "partition": -1})
    with pytest.raises(ValidationError):
        make_request(messages=({"role": "robot", "content": []},))


def test_usage_total() -> None:
    assert Usage(input_tokens=2, output_tokens=5).total_tokens == 7


def test_a_reply_and_a_log_record_take_who_asked_from_the_request() -> None:
    request = make_request(protocol="openai")
    reply = ReplyErrorV1.answering(
        request, seq=0, model="m", error=ErrorInfo(type="rate_limited", message="slow down")
    )
    assert (reply.request_id, reply.principal, reply.channel, reply.conversation_id) == (
        request.request_id,
        "alice",
        "/Outbound-Messages/alice",
        "c-1",
    )
    assert (reply.seq, reply.model, reply.error.type) == (0, "m", "rate_limited")

    log = RequestLogV1.of_request(request, model="m", provider="none", status="rejected")
    assert (log.request_id, log.principal, log.groups, log.conversation_id) == (
        request.request_id,
        "alice",
        ("staff",),
        "c-1",
    )
    assert (log.protocol, log.operation, log.started_at) == ("openai", "chat", request.created_at)
    started = utcnow()
    assert (
        RequestLogV1.of_request(
            request, started_at=started, model="m", provider="p", status="ok"
        ).started_at
        == started
    )
