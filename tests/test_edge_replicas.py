"""Replies reach the replica that holds the client: two edge processes owning disjoint reply
partitions each receive only the replies to the requests they accepted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.appsync_client import AppSyncSocket, chat_event, connect, dev_token
from tests.edges import Edge, edge_process
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, Edge]]:
    log_dir = Path(tmp_path_factory.mktemp("replica-logs"))
    with (
        edge_process(
            stack,
            log_dir,
            name="stream-a",
            env={"TOLLGATE_STREAM_REPLY_PARTITIONS": "0,1,2,3,4,5"},
        ) as a,
        edge_process(
            stack,
            log_dir,
            name="stream-b",
            env={"TOLLGATE_STREAM_REPLY_PARTITIONS": "6,7,8,9,10,11"},
        ) as b,
    ):
        yield a, b


async def publish(edge: Edge, user: str, count: int, token: str) -> list[str]:
    async with httpx.AsyncClient(headers={"Authorization": token}) as client:
        response = await client.post(
            f"{edge.url}/event",
            json={
                "channel": f"/Inbound-Messages/{user}",
                "events": [chat_event(f"question {i}", f"conv-{i}") for i in range(count)],
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed"] == []
    return [s["identifier"] for s in body["successful"]]


async def until_finished(
    socket: AppSyncSocket, sub_id: str, request_ids: set[str]
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    pending = set(request_ids)
    async with asyncio.timeout(30):
        async for event in socket.events(sub_id):
            seen.append(event)
            if "metadata" in event:
                pending.discard(event["requestId"])
                if not pending:
                    return seen
    raise AssertionError("unreachable")


async def test_each_replica_receives_only_its_own_replies(
    replicas: tuple[Edge, Edge], stack: Stack
) -> None:
    a, b = replicas
    token = await dev_token(stack.url("auth"), "rita")
    auth = {"Authorization": token}
    async with connect(a.url, auth) as on_a, connect(b.url, auth) as on_b:
        for socket in (on_a, on_b):
            assert (await socket.subscribe("s", "/Outbound-Messages/rita"))["type"] == (
                "subscribe_success"
            )
        via_a = await publish(a, "rita", 5, token)
        seen_on_a = await until_finished(on_a, "s", set(via_a))
        assert {e["requestId"] for e in seen_on_a} == set(via_a)

        via_b = await publish(b, "rita", 5, token)
        seen_on_b = await until_finished(on_b, "s", set(via_b))
        # B saw nothing of A's five answers, which were complete before B's requests existed
        assert {e["requestId"] for e in seen_on_b} == set(via_b)
        seen_later_on_a = await _drain(on_a)
        assert not {e["requestId"] for e in seen_later_on_a} & set(via_b)


async def _drain(socket: AppSyncSocket) -> list[dict[str, Any]]:
    """Whatever is already queued on the socket (stops at the first quiet 0.3 s)."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            message = await asyncio.wait_for(socket.receive(), timeout=0.3)
        except TimeoutError:
            return events
        if message.get("type") == "data":
            events.append(json.loads(message["event"]))


async def test_openai_requests_are_answered_by_the_replica_that_took_them(
    replicas: tuple[Edge, Edge], stack: Stack
) -> None:
    token = await dev_token(stack.url("auth"), "replica")
    for edge in replicas:
        async with openai.AsyncOpenAI(
            api_key=token, base_url=f"{edge.url}/v1", max_retries=0
        ) as client:
            results = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="tollgate-local",
                        messages=[{"role": "user", "content": f"replica question {i}"}],
                    )
                    for i in range(4)
                )
            )
        assert all(r.choices[0].message.content for r in results)
