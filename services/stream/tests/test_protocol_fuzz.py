"""Protocol fuzzing of the three client entrances, driven in-process: generated WebSocket
messages, ``POST /event`` bodies and ``POST /v1/chat/completions`` bodies (more than 10,000
in all). Whatever arrives: no crash, no 5xx, a typed answer, and nothing reaches Kafka for
what was refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate_core import topics
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.health import Health
from tollgate_stream.app import create_app
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

from .test_openai_api import Edge as OpenAIEdge
from .test_openai_api import asgi_messages
from .test_websocket_fuzz import REPLIES, channels, drive, protocol_messages

DEEP = b"[" * 50_000 + b"]" * 50_000
COUNTS: dict[str, int] = {"websocket": 0, "publish": 0, "openai": 0}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))

hostile_text = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud7ff", "\n", "x" * 300, "[" * 2000, "{" * 50 + "}" * 50]
) | st.text(max_size=30)
hostile_numbers = st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 1.5, -0.0]) | st.integers()
hostile = st.recursive(
    st.none() | st.booleans() | hostile_numbers | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=10,
)
chat_events = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.sampled_from(["user", "assistant", "system"]) | hostile,
                    "content": st.lists(
                        st.fixed_dictionaries({}, optional={"text": hostile_text | hostile})
                    )
                    | hostile,
                },
            ),
            max_size=3,
        )
        | hostile,
        "modelId": hostile_text | hostile,
        "maxTokens": hostile_numbers | hostile,
        "conversationId": hostile_text,
        "system": hostile,
        "temperature": hostile_numbers,
    },
).map(json.dumps)


async def asgi(app: Any, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP request straight through the ASGI app (no client, no socket)."""
    sent = await asgi_messages(app, path, body, headers)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


# --- WebSocket ------------------------------------------------------------------------------

ws_inputs = st.lists(
    protocol_messages
    | st.fixed_dictionaries(
        {"type": st.just("publish"), "id": st.just("p"), "channel": channels},
        optional={"events": st.lists(chat_events, max_size=6)},
    ).map(json.dumps)
    | hostile.map(json.dumps)
    | hostile_text
    | st.just(DEEP.decode())
    | st.binary(max_size=20),
    min_size=16,
    max_size=24,
)


@FUZZ
@given(ws_inputs)
def test_websocket_messages(messages: list[str | bytes]) -> None:
    replies, publisher = asyncio.run(drive(messages))
    COUNTS["websocket"] += len(messages)
    assert len(replies) == len(messages) + 1
    for reply in replies:
        assert reply["type"] in REPLIES, reply
        for error in reply.get("errors", []):
            assert isinstance(error["errorType"], str) and error["errorType"]
            assert error.get("errorCode", 400) < 500 or error["errorType"] != "InternalError"
    accepted = sum(len(r["successful"]) for r in replies if r["type"] == "publish_success")
    assert len(publisher.on(topics.REQUESTS)) == accepted


# --- HTTP publish ---------------------------------------------------------------------------

publish_bodies = (
    st.just(DEEP)
    | st.fixed_dictionaries(
        {},
        optional={
            "channel": channels,
            "events": st.lists(chat_events | hostile_text, max_size=7) | hostile,
        },
    ).map(lambda b: json.dumps(b).encode())
    | hostile.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
)


async def publish_all(bodies: list[bytes]) -> None:
    settings_ = StreamSettings(keepalive_interval_s=3600)
    publisher = InMemoryPublisher()
    gateway = Gateway(settings_, publisher, ChannelOwnerAuthorizer(), reply_partitions=[0])
    app = create_app(settings_, Health(), gateway, Subscriptions())
    for body in bodies:
        before = len(publisher.events)
        status, raw = await asgi(app, "/event", body, {"content-type": "application/json"})
        assert status in (200, 400, 401, 403, 413), (status, raw)
        answer = json.loads(raw)
        new = publisher.events[before:]
        published = sum(1 for e in new if e.topic == topics.REQUESTS)
        answered = [e.event for e in new if e.topic == topics.REPLIES]
        if status == 200:
            assert published == len(answer["successful"])
            assert all(400 <= f["errorCode"] < 500 for f in answer["failed"]), answer
            # each refused event is also answered on the caller's outbound channel
            assert [r.request_id for r in answered] == [  # type: ignore[attr-defined]
                f["identifier"] for f in answer["failed"]
            ]
        else:
            assert new == []
            assert answer["errors"][0]["errorType"]


@FUZZ
@given(st.lists(publish_bodies, min_size=14, max_size=18))
def test_http_publish_bodies(bodies: list[bytes]) -> None:
    asyncio.run(publish_all(bodies))
    COUNTS["publish"] += len(bodies)


# --- OpenAI chat completions ----------------------------------------------------------------

openai_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["tollgate-local", "other"]) | hostile_text | hostile,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.sampled_from(["user", "system", "assistant", "tool"]) | hostile,
                        "content": hostile_text
                        | st.lists(
                            st.fixed_dictionaries(
                                {"type": st.sampled_from(["text", "image_url"])},
                                optional={"text": hostile_text},
                            ),
                            max_size=3,
                        )
                        | hostile,
                    },
                ),
                max_size=3,
            )
            | hostile,
            "max_tokens": hostile_numbers | hostile,
            "max_completion_tokens": hostile_numbers,
            "temperature": hostile_numbers,
            "n": hostile_numbers,
            "stream": st.booleans() | hostile,
            "stream_options": hostile,
        },
    ).map(lambda b: json.dumps(b).encode())
    | hostile.map(lambda v: json.dumps(v).encode())
    | st.just(DEEP)
    | st.binary(max_size=64)
)


async def complete_all(bodies: list[bytes]) -> None:
    edge = OpenAIEdge()
    for body in bodies:
        before = len(edge.pipeline.requests)
        status, raw = await asgi(
            edge.app,
            "/v1/chat/completions",
            body,
            {"authorization": "Bearer sk-fuzz", "content-type": "application/json"},
        )
        assert status in (200, 400, 403, 404, 413), (status, raw[:300])
        published = len(edge.pipeline.requests) - before
        if status == 200:
            assert published == 1
        else:
            assert published == 0
            assert json.loads(raw)["error"]["type"] in ("invalid_request_error", "permission_error")


@FUZZ
@given(st.lists(openai_bodies, min_size=14, max_size=18))
def test_openai_bodies(bodies: list[bytes]) -> None:
    asyncio.run(complete_all(bodies))
    COUNTS["openai"] += len(bodies)


def test_at_least_ten_thousand_messages_were_generated() -> None:
    """Runs after the three above (file order): their totals."""
    if any(count == 0 for count in COUNTS.values()):
        return  # run alone (-k): nothing to count
    assert sum(COUNTS.values()) >= 10_000, COUNTS
