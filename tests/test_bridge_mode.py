"""Bridge mode: one Tollgate process plays the remote AppSync Events API (relay mode), another
bridges it to the pipeline; a client that only talks to the remote gets its answer."""

from __future__ import annotations

import asyncio
import json
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


#: the stand-in remote checks what AppSync would: the bridge's key or its SigV4 signature,
#: and the client's own key
CLIENT_KEY = {"x-api-key": "da2-clientkey"}
RELAY_AUTH = {
    "TOLLGATE_STREAM_MODE": "relay",
    "TOLLGATE_STREAM_RELAY_API_KEYS": "da2-bridgekey,da2-clientkey",
    "TOLLGATE_STREAM_RELAY_IAM_ACCESS_KEY_ID": "AKIDBRIDGE",
    "TOLLGATE_STREAM_RELAY_IAM_SECRET_ACCESS_KEY": "bridge-secret",
    "TOLLGATE_STREAM_RELAY_REGION": "eu-west-1",
}


@pytest.fixture(scope="module", params=sorted(BRIDGE_AUTH))
def remote_and_bridge(
    request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Edge, Edge]]:
    auth: str = request.param
    log_dir = Path(tmp_path_factory.mktemp(f"bridge-{auth}"))
    with edge_process(stack, log_dir, name="remote", env=RELAY_AUTH) as remote:
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
    async with connect(remote.url, CLIENT_KEY) as socket:
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


async def test_the_remote_refuses_callers_without_its_credentials(
    remote_and_bridge: tuple[Edge, Edge],
) -> None:
    import httpx
    import websockets

    from tests.appsync_client import header_subprotocol

    remote, _ = remote_and_bridge
    body = {"channel": "/Inbound-Messages/uma", "events": [chat_event("hi")]}
    async with httpx.AsyncClient() as client:
        anonymous = await client.post(f"{remote.url}/event", json=body)
        wrong = await client.post(f"{remote.url}/event", json=body, headers={"x-api-key": "nope"})
    assert anonymous.status_code == wrong.status_code == 401
    host = remote.url.split("://", 1)[1]
    protocols = ["aws-appsync-event-ws", header_subprotocol({"host": host, "x-api-key": "nope"})]
    url = remote.url.replace("http://", "ws://") + "/event/realtime"
    async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        await ws.send('{"type": "connection_init"}')
        refused = json.loads(await ws.recv())
    assert refused["type"] == "connection_error"
    assert refused["errors"][0]["errorType"] == "UnauthorizedException"
