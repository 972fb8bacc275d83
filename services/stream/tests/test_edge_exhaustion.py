"""An unauthenticated client must not be able to make the edge hold memory: bodies are
refused before they are read whole, deep JSON is a typed error, silent or idle sockets are
closed, connections are capped per process and per address, and a client that does not read
its events is disconnected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tollgate_core.bus import InMemoryPublisher
from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.appsync.websocket import Connection
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

from .test_appsync_protocol import CHAT
from .test_appsync_protocol import Edge as AppSyncEdge
from .test_openai_api import Edge as OpenAIEdge


class Counted:
    """A request body that streams ``total`` bytes and counts how many were read."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.read = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.read < self.total:
            self.read += self.chunk
            yield b" " * self.chunk


@pytest.mark.parametrize("path", ["/event", "/v1/chat/completions"])
async def test_an_oversized_body_is_refused_before_it_is_read_whole(path: str) -> None:
    edge = OpenAIEdge()
    body = Counted(64 * 1024 * 1024)
    async with edge.http() as client:
        response = await client.post(
            path,
            headers={"authorization": "Bearer k", "content-type": "application/json"},
            content=body,
        )
    assert response.status_code == 413
    assert body.read <= StreamSettings().max_body_bytes + body.chunk
    assert edge.pipeline.requests == []


async def test_a_declared_oversized_body_is_refused_unread() -> None:
    edge = OpenAIEdge()
    body = Counted(4 * 1024 * 1024)
    async with edge.http() as client:
        response = await client.post(
            "/event", headers={"content-length": str(body.total)}, content=body
        )
    assert response.status_code == 413
    assert body.read == 0


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def appsync() -> Iterator[AppSyncEdge]:
    edge = AppSyncEdge(StreamSettings(keepalive_interval_s=3600))
    with edge.client:
        yield edge


def test_deep_json_is_a_typed_error_everywhere(appsync: AppSyncEdge) -> None:
    response = appsync.client.post(
        "/event", content=DEEP, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["errorType"] == "BadRequestException"

    nested = "[" * 40 + "]" * 40  # valid JSON, deeper than max_json_depth
    response = appsync.client.post(
        "/event", json={"channel": "/Inbound-Messages/alice", "events": [nested, DEEP]}
    )
    assert [f["errorCode"] for f in response.json()["failed"]] == [400, 400]

    with appsync.client.websocket_connect(
        "/event/realtime", subprotocols=["aws-appsync-event-ws", "header-e30"]
    ) as ws:
        ws.send_text(DEEP)
        error = ws.receive_json()
        assert error["type"] == "error"
        assert error["errors"][0]["errorType"] == "BadRequestException"
        ws.send_json({"type": "connection_init"})  # still usable
        assert ws.receive_json()["type"] == "connection_ack"
    assert appsync.requests == []


def test_connections_are_capped_per_address_and_released() -> None:
    edge = AppSyncEdge(StreamSettings(keepalive_interval_s=3600, max_connections_per_address=2))
    with edge.client:
        url = "/event/realtime"
        with (
            edge.client.websocket_connect(url),
            edge.client.websocket_connect(url),
            pytest.raises(WebSocketDisconnect),
            edge.client.websocket_connect(url),
        ):
            pass
        with edge.client.websocket_connect(url) as ws:  # slots came back
            ws.send_json({"type": "connection_init"})
            assert ws.receive_json()["type"] == "connection_ack"


def test_connections_are_capped_per_process() -> None:
    edge = AppSyncEdge(StreamSettings(keepalive_interval_s=3600, max_connections=1))
    with (
        edge.client,
        edge.client.websocket_connect("/event/realtime"),
        pytest.raises(WebSocketDisconnect),
        edge.client.websocket_connect("/event/realtime"),
    ):
        pass


def test_server_pings_and_frame_limit_reach_uvicorn() -> None:
    from tollgate_stream.main import _websocket_options

    options = _websocket_options(StreamSettings())
    assert options["ws_ping_interval"] and options["ws_ping_timeout"]
    assert options["ws_max_size"] == StreamSettings().max_frame_bytes


# --- the connection itself, driven directly ---------------------------------------------


class Socket:
    """A client that sends ``inbox`` and then stays silent; ``stuck`` makes it stop
    reading, so every send blocks as on a full TCP buffer."""

    def __init__(self, inbox: list[str], *, stuck: bool = False) -> None:
        self.inbox = list(inbox)
        self.sent: list[str] = []
        self.stuck = stuck
        self.closed_with: int | None = None
        self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> dict[str, Any]:
        if self.inbox:
            return {"type": "websocket.receive", "text": self.inbox.pop(0)}
        await asyncio.Event().wait()  # silent for ever
        raise AssertionError

    async def send_text(self, text: str) -> None:
        if self.stuck and self.sent:
            await asyncio.Event().wait()
        self.sent.append(text)

    async def close(self, code: int = 1000) -> None:
        self.closed_with = code
        self.application_state = WebSocketState.DISCONNECTED


def connection(socket: Socket, subscriptions: Subscriptions, **overrides: Any) -> Connection:
    settings = StreamSettings(keepalive_interval_s=3600, **overrides)
    gateway = Gateway(settings, InMemoryPublisher(), ChannelOwnerAuthorizer(), reply_partitions=[0])
    return Connection(socket, gateway, subscriptions, settings, {})  # type: ignore[arg-type]


async def test_a_socket_that_never_sends_connection_init_is_closed() -> None:
    socket = Socket([])
    await asyncio.wait_for(
        connection(socket, Subscriptions(), connection_init_timeout_s=0.1).run(), 5
    )
    [error] = [json.loads(t) for t in socket.sent]
    assert error["type"] == "connection_error"
    assert error["errors"][0]["errorType"] == "TimeoutException"


async def test_an_idle_socket_without_subscriptions_is_closed() -> None:
    socket = Socket([json.dumps({"type": "connection_init"})])
    await asyncio.wait_for(connection(socket, Subscriptions(), idle_timeout_s=0.1).run(), 5)
    kinds = [json.loads(t)["type"] for t in socket.sent]
    assert kinds == ["connection_ack", "connection_error"]


async def test_a_subscribed_socket_is_not_idle() -> None:
    socket = Socket(
        [
            json.dumps({"type": "connection_init"}),
            json.dumps({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/alice"}),
        ]
    )
    task = asyncio.create_task(connection(socket, Subscriptions(), idle_timeout_s=0.1).run())
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()


async def test_a_client_that_does_not_read_is_disconnected() -> None:
    subscriptions = Subscriptions()
    socket = Socket(
        [
            json.dumps({"type": "connection_init"}),
            json.dumps({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/alice"}),
        ],
        stuck=True,
    )
    run = asyncio.create_task(connection(socket, subscriptions, send_queue_size=4).run())
    channel = parse_channel("/Outbound-Messages/alice", allow_wildcard=False)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if subscriptions.deliver(channel, CHAT) == 0:
            break
    await asyncio.wait_for(run, 5)  # the connection ended instead of waiting for ever
    assert socket.closed_with == 1008
    assert subscriptions.deliver(channel, CHAT) == 0


async def test_http_publish_counts_bad_input() -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value(
            "tollgate_bad_input_total", {"where": "stream.http_publish", "field": "body"}
        )
        return value or 0.0

    before = count()
    edge = OpenAIEdge()
    async with edge.http() as client:
        await client.post("/event", content=b"{oops", headers={"content-type": "application/json"})
    assert count() == before + 1
