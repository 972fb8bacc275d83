"""One request through the whole gateway: edge → meter → router → edge, as separate
processes over a real Kafka protocol peer and a real Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.appsync_client import AppSyncSocket, chat_event, connect, dev_token, http_publish
from tests.conftest import SpanLog
from tests.ledger import wait_settled
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def collect_answer(socket: AppSyncSocket, sub_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        async for event in socket.events(sub_id):
            events.append(event)
            if "metadata" in event or "error" in event:
                return events
    raise AssertionError("unreachable")


def assert_streamed_answer(events: list[dict[str, Any]], request_id: str) -> None:
    assert all(e["requestId"] == request_id for e in events)
    assert all(e["conversationId"] == "conv-1" for e in events)
    assert events[0] == {
        "messageStart": {"role": "assistant"},
        "requestId": request_id,
        "conversationId": "conv-1",
    }
    deltas = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) == 12
    assert "".join(deltas).strip()
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    usage = events[-1]["metadata"]["usage"]
    assert usage["outputTokens"] == 12
    assert usage["inputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


async def test_http_publish_streams_the_answer_to_the_websocket_subscriber(stack: Stack) -> None:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), "alice")
    async with connect(edge, {"Authorization": token}) as socket:
        assert await socket.subscribe("sub-1", "/Outbound-Messages/alice") == {
            "type": "subscribe_success",
            "id": "sub-1",
        }
        response = await http_publish(
            edge, token, "/Inbound-Messages/alice", chat_event("Hello there")
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["failed"] == []
        [accepted] = body["successful"]
        assert accepted["index"] == 0
        events = await collect_answer(socket, "sub-1")
    assert_streamed_answer(events, accepted["identifier"])


async def test_websocket_publish_and_a_subscriber_of_another_user_sees_nothing(
    stack: Stack,
) -> None:
    edge = stack.url("stream")
    alice_token = await dev_token(stack.url("auth"), "alice")
    bob_token = await dev_token(stack.url("auth"), "bob")
    async with (
        connect(edge, {"Authorization": alice_token}) as alice,
        connect(edge, {"Authorization": bob_token}) as bob,
    ):
        assert (await alice.subscribe("a", "/Outbound-Messages/alice"))[
            "type"
        ] == "subscribe_success"
        assert (await bob.subscribe("b", "/Outbound-Messages/bob"))["type"] == "subscribe_success"
        ack = await alice.publish("pub-1", "/Inbound-Messages/alice", chat_event("Hi there"))
        assert ack["type"] == "publish_success" and ack["id"] == "pub-1", ack
        request_id = ack["successful"][0]["identifier"]
        assert_streamed_answer(await collect_answer(alice, "a"), request_id)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await bob.receive()


async def test_the_meter_ledger_settles_the_request(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), "carol")
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", "/Outbound-Messages/carol")
        response = await http_publish(
            edge, token, "/Inbound-Messages/carol", chat_event("count me")
        )
        request_id = response.json()["successful"][0]["identifier"]
        events = await collect_answer(socket, "s")
    usage = events[-1]["metadata"]["usage"]
    row = await wait_settled(embedded_postgres.url, request_id, timeout=15)
    assert (row.input_tokens, row.output_tokens) == (usage["inputTokens"], usage["outputTokens"])
    assert row.principal == "carol"


async def test_a_websocket_client_leaving_mid_stream_is_still_metered(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), "ivan")
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", "/Outbound-Messages/ivan")
        ack = await socket.publish("p", "/Inbound-Messages/ivan", chat_event("I will not wait"))
        request_id = ack["successful"][0]["identifier"]
        async with asyncio.timeout(30):
            async for event in socket.events("s"):
                if "contentBlockDelta" in event:
                    break  # one token seen: the socket closes here
    # the answer runs to its end upstream and the whole of it is metered
    row = await wait_settled(embedded_postgres.url, request_id, timeout=20)
    assert (row.status, row.output_tokens, row.principal) == ("settled", 12, "ivan")


async def test_stream_meter_and_router_spans_share_one_trace(stack: Stack, otlp: SpanLog) -> None:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), "dave")
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", "/Outbound-Messages/dave")
        response = await http_publish(edge, token, "/Inbound-Messages/dave", chat_event("trace me"))
        request_id = response.json()["successful"][0]["identifier"]
        await collect_answer(socket, "s")

    def attribute(span: Any, key: str) -> str | None:
        for kv in span.attributes:
            if kv.key == key:
                return str(kv.value.string_value)
        return None

    async def span_named(name: str) -> Any:
        return await otlp.wait_for(
            lambda s: s.name == name and attribute(s, "tollgate.request_id") == request_id
        )

    meter = await span_named("meter.admit")
    router = await span_named("chat tollgate-local")
    trace_id = meter.trace_id
    assert router.trace_id == trace_id
    # the root of the trace is the edge's HTTP request span, and inside it the publish span,
    # which names no request id (one publish may carry several events); the ancestor of both.
    edge_span = await otlp.wait_for(
        lambda s: s.name == "publish Inbound-Messages" and s.trace_id == trace_id
    )
    root = await otlp.wait_for(lambda s: s.name == "POST /event" and s.trace_id == trace_id)
    assert edge_span.parent_span_id == root.span_id
    assert not root.parent_span_id
