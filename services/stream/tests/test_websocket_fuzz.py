"""Property: whatever a client sends, the AppSync connection answers every message with one
typed message and stays usable (a final ``connection_init`` is still acknowledged)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.websockets import WebSocketState

from tollgate_core import topics
from tollgate_core.bus import InMemoryPublisher
from tollgate_stream.appsync.websocket import Connection
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

REPLIES = {
    "connection_ack",
    "error",
    "subscribe_success",
    "subscribe_error",
    "unsubscribe_success",
    "unsubscribe_error",
    "publish_success",
    "publish_error",
}


class FakeSocket:
    """Starlette's WebSocket as the connection uses it: ASGI receive messages, text or bytes."""

    def __init__(self, inbox: list[str | bytes]) -> None:
        self.inbox = list(inbox)
        self.sent: list[str] = []
        self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> dict[str, Any]:
        if not self.inbox:
            return {"type": "websocket.disconnect", "code": 1000}
        frame = self.inbox.pop(0)
        if isinstance(frame, bytes):
            return {"type": "websocket.receive", "bytes": frame}
        return {"type": "websocket.receive", "text": frame}

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int = 1000) -> None:
        self.application_state = WebSocketState.DISCONNECTED


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
channels = (
    st.sampled_from(
        [
            "/Inbound-Messages/alice",
            "/Outbound-Messages/alice",
            "/Outbound-Messages/alice/*",
            "/Outbound-Messages/*",
            "/Inbound-Messages",
            "/Unknown/alice",
            "Inbound-Messages/alice",
            "/Inbound-Messages/" + "a" * 60,
            "/a/b/c/d/e/f",
            "",
        ]
    )
    | json_values
)
chat = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
events = st.lists(st.sampled_from([chat, "{}", "not json", "[1]"]) | json_values, max_size=7)
protocol_messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["connection_init", "subscribe", "unsubscribe", "publish", "ka", "x"]
        )
    },
    optional={
        "id": st.none() | st.text(max_size=10) | st.integers(),
        "channel": channels,
        "events": events | json_values,
        "authorization": json_values,
        "payload": json_values,
    },
).map(json.dumps)
inputs = st.lists(
    protocol_messages
    | json_values.map(json.dumps)
    | st.text(max_size=50)
    | protocol_messages.map(str.encode)
    | st.binary(max_size=20),
    max_size=12,
)


async def drive(messages: list[str | bytes]) -> tuple[list[dict[str, Any]], InMemoryPublisher]:
    settings = StreamSettings(keepalive_interval_s=3600)
    publisher = InMemoryPublisher()
    subscriptions = Subscriptions()
    gateway = Gateway(settings, publisher, ChannelOwnerAuthorizer(), reply_partitions=[0])
    socket = FakeSocket([*messages, json.dumps({"type": "connection_init"})])
    connection = Connection(socket, gateway, subscriptions, settings, {})  # type: ignore[arg-type]
    await asyncio.wait_for(connection.run(), timeout=30)
    return [json.loads(text) for text in socket.sent], publisher


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(inputs)
def test_every_message_gets_one_typed_answer_and_the_connection_survives(
    messages: list[str | bytes],
) -> None:
    replies, publisher = asyncio.run(drive(messages))
    assert len(replies) == len(messages) + 1
    for reply in replies:
        assert reply["type"] in REPLIES, reply
        for error in reply.get("errors", []):
            assert isinstance(error["errorType"], str) and error["errorType"]
    assert replies[-1]["type"] == "connection_ack"
    accepted = sum(len(r["successful"]) for r in replies if r["type"] == "publish_success")
    assert len(publisher.on(topics.REQUESTS)) == accepted
