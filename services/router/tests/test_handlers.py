from __future__ import annotations

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    UsageRecordV1,
)
from tollgate_router.handlers import GenerationHandler
from tollgate_router.providers.local import LocalProvider


def admission(model: str | None = None) -> Delivered[AdmissionV1]:
    request = ChatRequestV1(
        principal="alice",
        model=model,
        messages=(ChatMessage(role="user", content=(TextBlock(text="hello"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=4),
        channel="/Outbound-Messages/alice",
        conversation_id="c",
    )
    event = AdmissionV1(request=request, reserved_input_tokens=1, reserved_output_tokens=10)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key="alice")


def handler(publisher: InMemoryPublisher) -> GenerationHandler:
    local = LocalProvider(time_to_first_token_ms=0, tokens_per_second=10_000, output_tokens=3)
    return GenerationHandler({"tollgate-local": local}, publisher, default_model="tollgate-local")


async def test_streams_chunks_then_done_to_the_reply_partition_and_reports_usage() -> None:
    publisher = InMemoryPublisher()
    delivered = admission()
    await handler(publisher)(delivered)
    replies = [p for p in publisher.events if p.topic == topics.REPLIES]
    assert {p.partition for p in replies} == {4}
    kinds = [type(p.event) for p in replies]
    assert kinds == [ReplyChunkV1, ReplyChunkV1, ReplyChunkV1, ReplyDoneV1]
    assert [p.event.seq for p in replies] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    done = replies[-1].event
    assert isinstance(done, ReplyDoneV1) and done.usage.output_tokens == 3
    assert done.channel == "/Outbound-Messages/alice" and done.conversation_id == "c"
    [usage] = publisher.on(topics.USAGE)
    assert isinstance(usage, UsageRecordV1) and usage.usage == done.usage
    [log] = publisher.on(topics.LOGS)
    assert isinstance(log, RequestLogV1)
    assert log.status == "ok" and log.output_tokens == 3 and log.time_to_first_token_ms is not None
    assert log.request_id == delivered.event.request_id


async def test_unknown_model_ends_with_a_typed_error_and_a_zero_usage_record() -> None:
    publisher = InMemoryPublisher()
    await handler(publisher)(admission(model="no-such-model"))
    [reply] = publisher.on(topics.REPLIES)
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "model_not_found"
    [usage] = publisher.on(topics.USAGE)
    assert isinstance(usage, UsageRecordV1) and usage.usage.total_tokens == 0
    [log] = publisher.on(topics.LOGS)
    assert isinstance(log, RequestLogV1) and log.error_type == "model_not_found"
