"""The router inside the running gateway: its model list, and a prepared answer added through
its admin API served to its principal only, at no token cost, settled once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.appsync_client import chat_event, connect, dev_token
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e
ADMIN = {"authorization": "Bearer e2e-admin-token"}


async def ask(stack: Stack, principal: str, question: str) -> tuple[str, list[dict[str, Any]]]:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), principal)
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", f"/Outbound-Messages/{principal}")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{edge}/event",
                json={
                    "channel": f"/Inbound-Messages/{principal}",
                    "events": [chat_event(question)],
                },
                headers={"Authorization": token},
            )
        request_id = response.json()["successful"][0]["identifier"]
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            async for event in socket.events("s"):
                events.append(event)
                if "metadata" in event or "error" in event:
                    break
    return request_id, events


def answer(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )


async def test_the_router_lists_its_models(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{stack.url('router')}/v1/models")).json()
    [model] = [m for m in body["data"] if m["default"]]
    assert model["id"] == "tollgate-local"
    assert {m["id"] for m in body["data"]} == {"tollgate-local", "fake-gpt"}


async def test_a_personal_prepared_answer_reaches_only_its_principal(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    question = "What is my locker code?"
    async with httpx.AsyncClient() as client:
        created = await client.post(
            f"{stack.url('router')}/admin/prepared",
            headers=ADMIN,
            json={
                "principal": "erin",
                "messages": [{"role": "user", "content": [{"text": question}]}],
                "response": "Erin, your locker code is 4711.",
                "ttl_seconds": 600,
            },
        )
    assert created.status_code == 201, created.text
    request_id, events = await ask(stack, "erin", question)
    assert answer(events) == "Erin, your locker code is 4711."
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 0
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 0
    _, other = await ask(stack, "frank", question)
    assert "4711" not in answer(other) and other[-1]["metadata"]["usage"]["outputTokens"] > 0

    engine = create_async_engine(DatabaseSettings(database_url=embedded_postgres.url).async_url)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(15):
            while True:
                async with engine.connect() as conn:
                    state = (
                        await conn.execute(
                            text("SELECT state FROM router.requests WHERE request_id = :r"),
                            {"r": request_id},
                        )
                    ).scalar()
                if state == "settled":
                    break
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
