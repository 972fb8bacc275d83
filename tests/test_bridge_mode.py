"""Bridge mode: one Tollgate process plays the remote AppSync Events API (relay mode), another
bridges it to the pipeline; a client that only talks to the remote gets its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.appsync_client import chat_event, connect
from tests.edges import Edge, edge_process
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e

BRIDGE_AUTH = {
    "api_key": {"TOLLGATE_STREAM_APPSYNC_API_KEY": "da2-bridgekey"},
    "iam": {
        "AWS_ACCESS_KEY_ID": "AKIDBRIDGE",
        "AWS_SECRET_ACCESS_KEY": "bridge-secret",
        "AWS_SESSION_TOKEN": "bridge-session",
    },
}


@pytest.fixture(scope="module", params=sorted(BRIDGE_AUTH))
def remote_and_bridge(
    request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Edge, Edge]]:
    auth: str = request.param
    log_dir = Path(tmp_path_factory.mktemp(f"bridge-{auth}"))
    with edge_process(
        stack, log_dir, name="remote", env={"TOLLGATE_STREAM_MODE": "relay"}
    ) as remote:
        env = {
            "TOLLGATE_STREAM_MODE": "appsync",
            "TOLLGATE_STREAM_APPSYNC_ENDPOINT": f"{remote.url}/event",
            "TOLLGATE_STREAM_APPSYNC_AUTH": auth,
            "TOLLGATE_STREAM_APPSYNC_REGION": "eu-west-1",
            **BRIDGE_AUTH[auth],
        }
        with edge_process(stack, log_dir, name="bridge", env=env) as bridge:
            yield remote, bridge


async def test_a_conversation_through_the_remote_is_answered(
    remote_and_bridge: tuple[Edge, Edge],
) -> None:
    remote, _ = remote_and_bridge
    async with connect(remote.url) as socket:
        assert (await socket.subscribe("out", "/Outbound-Messages/uma/chat-1"))["type"] == (
            "subscribe_success"
        )
        for turn in ("first question", "second question"):
            await socket.send(
                {
                    "type": "publish",
                    "id": f"pub-{turn}",
                    "channel": "/Inbound-Messages/uma/chat-1",
                    "events": [chat_event(turn, conversation_id="bridged")],
                    "authorization": {},
                }
            )
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(30):
                async for event in socket.events("out"):
                    events.append(event)
                    if "metadata" in event or "error" in event:
                        break
            assert events[0]["messageStart"] == {"role": "assistant"}
            deltas = [
                e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
            ]
            assert len(deltas) == 12
            assert events[-1]["metadata"]["usage"]["outputTokens"] == 12
            assert {e["conversationId"] for e in events} == {"bridged"}
            assert len({e["requestId"] for e in events}) == 1
