"""A minimal AppSync Events client for tests, speaking the protocol as AWS clients do."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection


def header_subprotocol(headers: dict[str, str]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(headers).encode()).decode().rstrip("=")
    return f"header-{encoded}"


class AppSyncSocket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, *, skip_keepalive: bool = True) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await self.ws.recv())
            if not (skip_keepalive and message.get("type") == "ka"):
                return message

    async def subscribe(self, sub_id: str, channel: str) -> dict[str, Any]:
        await self.send(
            {"type": "subscribe", "id": sub_id, "channel": channel, "authorization": {}}
        )
        return await self.receive()

    async def publish(self, pub_id: str, channel: str, *events: str) -> dict[str, Any]:
        """Publish over the socket; the acknowledgement."""
        await self.send(
            {
                "type": "publish",
                "id": pub_id,
                "channel": channel,
                "events": list(events),
                "authorization": {},
            }
        )
        return await self.receive()

    async def events(self, sub_id: str) -> AsyncIterator[dict[str, Any]]:
        """The parsed events of ``data`` messages for one subscription."""
        while True:
            message = await self.receive()
            if message.get("type") == "data" and message.get("id") == sub_id:
                yield json.loads(message["event"])


@asynccontextmanager
async def connect(
    base_url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[AppSyncSocket]:
    url = base_url.replace("http://", "ws://") + "/event/realtime"
    host = base_url.split("://", 1)[1]
    protocols = ["aws-appsync-event-ws", header_subprotocol({"host": host, **(headers or {})})]
    async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "aws-appsync-event-ws"
        socket = AppSyncSocket(ws)
        await socket.send({"type": "connection_init"})
        ack = await socket.receive()
        assert ack["type"] == "connection_ack", ack
        yield socket


async def dev_token(auth_url: str, sub: str, groups: tuple[str, ...] = ()) -> str:
    """An access token for ``sub`` from the auth service's development IdP."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{auth_url}/v1/dev/token", json={"sub": sub, "groups": groups}
        )
    response.raise_for_status()
    return str(response.json()["access_token"])


def chat_event(text: str, conversation_id: str = "conv-1", **extra: Any) -> str:
    return json.dumps(
        {
            "messages": [{"role": "user", "content": [{"text": text}]}],
            "conversationId": conversation_id,
            **extra,
        }
    )


async def http_publish(edge_url: str, token: str, channel: str, *events: str) -> httpx.Response:
    """``POST /event`` as the AppSync HTTP publish API takes it."""
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{edge_url}/event",
            headers={"Authorization": token},
            json={"channel": channel, "events": list(events)},
        )
