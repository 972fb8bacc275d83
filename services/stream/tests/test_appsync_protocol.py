"""The AppSync Events protocol in-process, with Kafka replaced by an in-memory publisher."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import ChatRequestV1, ReplyChunkV1, ReplyDoneV1, Usage
from tollgate_core.health import Health
from tollgate_stream.app import create_app
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer
from tollgate_stream.replies import ReplyDispatcher
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

CHAT = json.dumps(
    {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "conversationId": "c"}
)


class Edge:
    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or StreamSettings(keepalive_interval_s=3600)
        self.publisher = InMemoryPublisher()
        self.subscriptions = Subscriptions()
        gateway = Gateway(
            self.settings, self.publisher, ChannelOwnerAuthorizer(), reply_partitions=[0, 1]
        )
        self.dispatcher = ReplyDispatcher(self.subscriptions)
        self.client = TestClient(create_app(self.settings, Health(), gateway, self.subscriptions))

    @property
    def requests(self) -> list[ChatRequestV1]:
        return [e for e in self.publisher.on(topics.REQUESTS) if isinstance(e, ChatRequestV1)]


@pytest.fixture
def edge() -> Iterator[Edge]:
    edge = Edge()
    with edge.client:
        yield edge


def ws(edge: Edge) -> Any:
    return edge.client.websocket_connect(
        "/event/realtime", subprotocols=["aws-appsync-event-ws", "header-e30"]
    )


def test_connection_init_is_acknowledged_with_the_timeout_in_both_places(edge: Edge) -> None:
    with ws(edge) as socket:
        assert socket.accepted_subprotocol == "aws-appsync-event-ws"
        socket.send_json({"type": "connection_init"})
        ack = socket.receive_json()
        assert ack == {
            "type": "connection_ack",
            "connectionTimeoutMs": 300000,
            "payload": {"connectionTimeoutMs": 300000},
        }


def test_publish_subscribe_and_delivery(edge: Edge) -> None:
    with ws(edge) as socket:
        socket.send_json({"type": "connection_init"})
        socket.receive_json()
        socket.send_json({"type": "subscribe", "id": "s1", "channel": "/Outbound-Messages/alice"})
        assert socket.receive_json() == {"type": "subscribe_success", "id": "s1"}
        socket.send_json(
            {
                "type": "publish",
                "id": "p1",
                "channel": "/Inbound-Messages/alice",
                "events": [CHAT, CHAT],
            }
        )
        ack = socket.receive_json()
        assert ack["type"] == "publish_success" and ack["failed"] == []
        assert [s["index"] for s in ack["successful"]] == [0, 1]
        request = edge.requests[0]
        assert request.principal == "alice" and request.channel == "/Outbound-Messages/alice"
        assert request.reply_to.topic == topics.REPLIES and request.reply_to.partition in (0, 1)
        assert request.request_id == ack["successful"][0]["identifier"]

        def deliver(event: ReplyChunkV1 | ReplyDoneV1) -> None:
            edge.client.portal.call(  # type: ignore[union-attr]
                edge.dispatcher, Delivered(event=event, topic="t", partition=0, offset=0, key=None)
            )

        chunk = ReplyChunkV1(
            request_id=request.request_id,
            principal="alice",
            seq=0,
            text="Hel",
            channel=request.channel,
            conversation_id="c",
        )
        deliver(chunk)
        deliver(chunk)  # a redelivered chunk is not shown twice
        deliver(
            ReplyDoneV1(
                request_id=request.request_id,
                principal="alice",
                seq=1,
                channel=request.channel,
                usage=Usage(output_tokens=1),
            )
        )
        received = [socket.receive_json() for _ in range(4)]
        assert all(m["type"] == "data" and m["id"] == "s1" for m in received)
        events = [json.loads(m["event"]) for m in received]
        assert [next(iter(e)) for e in events] == [
            "messageStart",
            "contentBlockDelta",
            "messageStop",
            "metadata",
        ]

        socket.send_json({"type": "unsubscribe", "id": "s1"})
        assert socket.receive_json() == {"type": "unsubscribe_success", "id": "s1"}


@pytest.mark.parametrize(
    ("message", "reply_type", "error_type"),
    [
        (
            {"type": "subscribe", "id": "x", "channel": "/Outbound-Messages/bob/extra/a/b/c"},
            "subscribe_error",
            "BadRequestException",
        ),
        (
            {"type": "subscribe", "id": "x", "channel": "/Undeclared/alice"},
            "subscribe_error",
            "BadRequestException",
        ),
        (
            {"type": "subscribe", "id": "x", "channel": "/Inbound-Messages/alice"},
            "subscribe_error",
            "Unauthorized",
        ),
        (
            {"type": "subscribe", "channel": "/Outbound-Messages/alice"},
            "subscribe_error",
            "BadRequestException",
        ),
        (
            {"type": "publish", "id": "x", "channel": "/Outbound-Messages/alice", "events": [CHAT]},
            "publish_error",
            "Unauthorized",
        ),
        (
            {
                "type": "publish",
                "id": "x",
                "channel": "/Inbound-Messages/alice",
                "events": [CHAT] * 6,
            },
            "publish_error",
            "BadRequestException",
        ),
        (
            {"type": "publish", "id": "x", "channel": "/Inbound-Messages/alice", "events": []},
            "publish_error",
            "BadRequestException",
        ),
        (
            {
                "type": "publish",
                "id": "x",
                "channel": "/Inbound-Messages/alice/*",
                "events": [CHAT],
            },
            "publish_error",
            "BadRequestException",
        ),
        (
            {"type": "publish", "channel": "/Inbound-Messages/alice", "events": [CHAT]},
            "publish_error",
            "BadRequestException",
        ),
        ({"type": "unsubscribe", "id": "never"}, "unsubscribe_error", "UnknownOperationError"),
        ({"type": "teleport", "id": "x"}, "error", "UnsupportedOperation"),
    ],
)
def test_bad_messages_get_typed_errors_and_the_connection_stays_usable(
    edge: Edge, message: dict[str, Any], reply_type: str, error_type: str
) -> None:
    with ws(edge) as socket:
        socket.send_json({"type": "connection_init"})
        socket.receive_json()
        socket.send_json(message)
        reply = socket.receive_json()
        assert reply["type"] == reply_type
        assert reply["errors"][0]["errorType"] == error_type
        socket.send_json({"type": "subscribe", "id": "ok", "channel": "/Outbound-Messages/alice"})
        assert socket.receive_json()["type"] == "subscribe_success"
    assert edge.requests == []


def test_malformed_frames_are_errors_not_disconnects(edge: Edge) -> None:
    with ws(edge) as socket:
        socket.send_text("{not json")
        assert socket.receive_json()["errors"][0]["errorType"] == "BadRequestException"
        socket.send_text("[1, 2]")
        assert socket.receive_json()["type"] == "error"
        socket.send_bytes(b'{"type": "connection_init"}')
        binary = socket.receive_json()
        assert binary["type"] == "error"
        assert binary["errors"][0]["errorType"] == "BadRequestException"
        assert "binary" in binary["errors"][0]["message"]
        socket.send_json({"type": "connection_init"})
        assert socket.receive_json()["type"] == "connection_ack"


def test_at_most_max_subscriptions_per_connection() -> None:
    edge = Edge(StreamSettings(keepalive_interval_s=3600, max_subscriptions=3))
    with edge.client, ws(edge) as socket:
        socket.send_json({"type": "connection_init"})
        socket.receive_json()
        for n in range(3):
            socket.send_json(
                {"type": "subscribe", "id": f"s{n}", "channel": f"/Outbound-Messages/alice/c{n}"}
            )
            assert socket.receive_json() == {"type": "subscribe_success", "id": f"s{n}"}
        socket.send_json({"type": "subscribe", "id": "s3", "channel": "/Outbound-Messages/alice"})
        refused = socket.receive_json()
        assert refused["type"] == "subscribe_error" and refused["id"] == "s3"
        assert refused["errors"][0]["errorType"] == "LimitExceededException"
        socket.send_json({"type": "unsubscribe", "id": "s0"})
        assert socket.receive_json() == {"type": "unsubscribe_success", "id": "s0"}
        socket.send_json({"type": "subscribe", "id": "s4", "channel": "/Outbound-Messages/alice"})
        assert socket.receive_json() == {"type": "subscribe_success", "id": "s4"}


def test_keep_alives_come_periodically_after_the_ack() -> None:
    edge = Edge(StreamSettings(keepalive_interval_s=0.05))
    with edge.client, ws(edge) as socket:
        socket.send_json({"type": "connection_init"})
        assert socket.receive_json()["type"] == "connection_ack"
        assert [socket.receive_json() for _ in range(3)] == [{"type": "ka"}] * 3


def test_per_event_failures_are_reported_and_reach_no_topic(edge: Edge) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": [{"text": "x" * 250_000}]}]})
    events: list[Any] = ["not json", {"an": "object"}, big, '{"messages": []}', CHAT]
    response = edge.client.post(
        "/event", json={"channel": "/Inbound-Messages/alice", "events": events}
    )
    assert response.status_code == 200
    body = response.json()
    assert [f["index"] for f in body["failed"]] == [0, 1, 2, 3]
    assert all(f["errorCode"] == 400 and f["errorMessage"] for f in body["failed"])
    assert [s["index"] for s in body["successful"]] == [4]
    assert len(edge.requests) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{oops", 400),
        (b"[]", 400),
        (json.dumps({"channel": "/Nope/a", "events": [CHAT]}).encode(), 400),
        (json.dumps({"channel": "/Inbound-Messages/alice", "events": [CHAT] * 6}).encode(), 400),
    ],
)
def test_http_publish_errors(edge: Edge, body: bytes, status: int) -> None:
    response = edge.client.post(
        "/event", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["errors"][0]["errorType"] == "BadRequestException"
    assert edge.requests == []


def test_ops_endpoints(edge: Edge) -> None:
    assert edge.client.get("/healthz").json() == {"status": "ok"}
    assert edge.client.get("/readyz").status_code == 200  # no checks registered
    assert "tollgate_stream_connections" in edge.client.get("/metrics").text
