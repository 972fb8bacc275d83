"""What a client written for the AWS sample expects of the edge, through the whole gateway:
usage on the answer's metadata, refusals on the outbound channel, subtree subscriptions,
soft-limit warnings and the caller's usage through the edge."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.appsync_client import chat_event, connect, dev_token, http_publish
from tests.conftest import METER_ADMIN_TOKEN
from tests.ledger import wait_settled
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def answer(socket: Any, sub_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The events of ``count`` answers (each ends with metadata or an error)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        async for event in socket.events(sub_id):
            events.append(event)
            count -= "metadata" in event or "error" in event
            if count == 0:
                return events
    raise AssertionError("unreachable")


async def test_the_last_metadata_event_carries_the_callers_usage(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    token = await dev_token(stack.url("auth"), "sample-ann")
    async with connect(stack.url("stream"), {"Authorization": token}) as socket:
        subscribed = await socket.subscribe("s", "/Outbound-Messages/sample-ann/*")
        assert subscribed["type"] == "subscribe_success"
        published = await http_publish(
            stack.url("stream"), token, "/Inbound-Messages/sample-ann/chat-1", chat_event("Hi")
        )
        [ok] = published.json()["successful"]
        events = await answer(socket, "s")
    metadata = events[-1]
    settled = await wait_settled(embedded_postgres.url, ok["identifier"])
    usage = metadata["tokenUsage"]
    assert metadata["requestId"] == ok["identifier"] and metadata["conversationId"] == "conv-1"
    assert usage["settled"] is True
    assert usage["currentUsage"] == {
        "inputTokens": settled.input_tokens,
        "outputTokens": settled.output_tokens,
        "totalTokens": settled.input_tokens + settled.output_tokens,
    }
    assert usage["totalUsage"]["dailyOutputTokens"] == settled.output_tokens
    assert usage["totalUsage"]["monthlyInputTokens"] == settled.input_tokens
    for window in usage["windows"]:
        assert window["used"]["outputTokens"] == settled.output_tokens
        limit = window["limit"]["outputTokens"]
        assert window["remaining"]["outputTokens"] == limit - settled.output_tokens
    assert usage["warnings"] == []


async def test_a_refused_event_is_answered_on_the_outbound_channel(stack: Stack) -> None:
    token = await dev_token(stack.url("auth"), "sample-bea")
    async with connect(stack.url("stream"), {"Authorization": token}) as socket:
        await socket.subscribe("s", "/Outbound-Messages/sample-bea/*")
        published = await http_publish(
            stack.url("stream"),
            token,
            "/Inbound-Messages/sample-bea",
            chat_event("x", conversation_id="conv-9", modelId="claude-big"),
            json.dumps({"messages": "not a list", "conversationId": "conv-9"}),
        )
        events = await answer(socket, "s", count=2)
    failed = published.json()["failed"]
    assert [f["errorCode"] for f in failed] == [403, 400]
    errors = {e["error"]["requestId"]: e for e in events}
    assert set(errors) == {f["identifier"] for f in failed}
    refused, invalid = (errors[f["identifier"]] for f in failed)
    assert refused["error"]["type"] == "model_not_allowed" and refused["conversationId"] == "conv-9"
    assert invalid["error"]["type"] == "validation_error"
    assert invalid["error"]["details"] == {"field": "messages"}


async def edge_metric(stack: Stack, name: str, labels: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{stack.url('stream')}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


async def test_an_answer_past_a_threshold_warns_and_is_counted(stack: Stack) -> None:
    user = "sample-cid"
    async with httpx.AsyncClient(base_url=stack.url("meter")) as meter:
        limits = {"windows": [{"name": "small", "kind": "trailing", "seconds": 600, "output": 14}]}
        put = await meter.put(
            f"/v1/admin/principals/{user}",
            headers={"authorization": f"Bearer {METER_ADMIN_TOKEN}"},
            json=limits,
        )
        put.raise_for_status()
    labels = 'threshold="0.8",window="small"'
    before = await edge_metric(stack, "tollgate_stream_usage_warnings_total", labels)
    token = await dev_token(stack.url("auth"), user)
    async with connect(stack.url("stream"), {"Authorization": token}) as socket:
        await socket.subscribe("s", f"/Outbound-Messages/{user}")
        await http_publish(
            stack.url("stream"), token, f"/Inbound-Messages/{user}", chat_event("Hi", maxTokens=12)
        )
        metadata = (await answer(socket, "s"))[-1]
    # 12 of 14 output tokens: past 80 %, not yet 95 %
    [warning] = metadata["tokenUsage"]["warnings"]
    assert warning["type"] == "usage_warning" and warning["window"] == "small"
    assert (warning["dimension"], warning["threshold"]) == ("outputTokens", 0.8)
    assert warning["used"] == 12 and warning["limit"] == 14
    assert await edge_metric(stack, "tollgate_stream_usage_warnings_total", labels) == before + 1


async def test_usage_through_the_edge_with_the_callers_own_credential(stack: Stack) -> None:
    user, admin = (
        await dev_token(stack.url("auth"), "sample-dee"),
        await dev_token(stack.url("auth"), "sample-root", ("admin",)),
    )
    async with httpx.AsyncClient(base_url=stack.url("stream")) as edge:
        mine = await edge.get("/v1/usage/me", headers={"authorization": f"Bearer {user}"})
        assert mine.status_code == 200 and mine.json()["principal"] == "sample-dee"
        assert [w["name"] for w in mine.json()["windows"]]
        bad = await edge.get("/v1/usage/me", headers={"authorization": "Bearer not-a-token"})
        assert bad.status_code == 401
        refused = await edge.get("/v1/admin/usage", headers={"authorization": f"Bearer {user}"})
        assert refused.status_code == 403
        other = await edge.get("/v1/usage/sample-root", headers={"authorization": f"Bearer {user}"})
        assert other.status_code == 403
        overview = await edge.get("/v1/admin/usage", headers={"authorization": f"Bearer {admin}"})
        assert overview.status_code == 200 and "principals" in overview.json()
