"""Identity through the running gateway: the edge asks the auth service over HTTP, refusals
are AppSync errors, and every decision lands on the audit topic."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from tests.appsync_client import chat_event, connect, dev_token
from tollgate_core import topics
from tollgate_core.bus import Decoder
from tollgate_core.contracts import AuditEventV1
from tollgate_dev.platform import TansuBroker
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def test_cross_user_access_is_refused_and_audited(
    stack: Stack, kafka_broker: TansuBroker
) -> None:
    edge, auth = stack.url("stream"), stack.url("auth")
    mallory = f"mallory-{uuid.uuid4().hex[:8]}"
    token = await dev_token(auth, mallory)
    async with connect(edge, {"Authorization": token}) as socket:
        reply = await socket.subscribe("s", "/Outbound-Messages/alice")
        assert reply["type"] == "subscribe_error"
        assert reply["errors"][0]["errorType"] == "Unauthorized"
        assert (await socket.subscribe("own", f"/Outbound-Messages/{mallory}"))["type"] == (
            "subscribe_success"
        )
    async with httpx.AsyncClient() as client:
        stolen = await client.post(
            f"{edge}/event",
            headers={"Authorization": token},
            json={"channel": "/Inbound-Messages/alice", "events": [chat_event("hi")]},
        )
        anonymous = await client.post(
            f"{edge}/event",
            json={"channel": f"/Inbound-Messages/{mallory}", "events": [chat_event("hi")]},
        )
        premium_model = await client.post(
            f"{edge}/event",
            headers={"Authorization": token},
            json={
                "channel": f"/Inbound-Messages/{mallory}",
                "events": [chat_event("hi", modelId="anthropic.claude-big")],
            },
        )
    assert stolen.status_code == 403
    assert stolen.json()["errors"][0]["errorType"] == "Unauthorized"
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["errorType"] == "UnauthorizedException"
    assert premium_model.status_code == 200
    assert premium_model.json()["successful"] == []
    assert premium_model.json()["failed"][0]["errorCode"] == 403

    decoder = Decoder.of(AuditEventV1)
    consumer = AIOKafkaConsumer(
        topics.AUDIT,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[AuditEventV1] = []
    try:
        async with asyncio.timeout(20):
            while not any(
                e.outcome == "deny" and e.channel == "/Inbound-Messages/alice" for e in seen
            ):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        schema = dict(record.headers).get("tollgate-schema")
                        event = decoder.decode(record.value, schema.decode() if schema else None)
                        if event.principal == mallory:
                            seen.append(event)
    finally:
        await consumer.stop()
    denial = next(e for e in seen if e.channel == "/Inbound-Messages/alice")
    assert (denial.operation, denial.reason, denial.credential) == (
        "publish",
        "channel_denied",
        "jwt",
    )
    assert any(e.outcome == "allow" and e.operation == "subscribe" for e in seen)
