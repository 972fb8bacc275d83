"""Hostile input at the edge: every bound is checked here, with an error naming the field,
before anything reaches Kafka."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tollgate_core.limits import Limits
from tollgate_stream.settings import StreamSettings

from .test_appsync_protocol import Edge as AppSyncEdge
from .test_openai_api import Edge as OpenAIEdge


@pytest.fixture
def appsync() -> Iterator[AppSyncEdge]:
    edge = AppSyncEdge(StreamSettings(keepalive_interval_s=3600))
    with edge.client:
        yield edge


def chat(**fields: object) -> str:
    return json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}], **fields})


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (chat(maxTokens=2**31), "maxTokens"),
        (chat(maxTokens=Limits().max_tokens + 1), "maxTokens"),
        (chat(modelId="bad\u0000model"), "modelId"),
        (chat(modelId="bad\nmodel"), "modelId"),
        (chat(conversationId="c\u0000"), "conversationId"),
    ],
)
def test_appsync_publish_refuses_out_of_bounds_fields(
    appsync: AppSyncEdge, event: str, field: str
) -> None:
    response = appsync.client.post(
        "/event", json={"channel": "/Inbound-Messages/alice", "events": [event]}
    )
    assert response.status_code == 200
    [failed] = response.json()["failed"]
    assert failed["errorCode"] == 400
    assert field in failed["errorMessage"]
    assert appsync.requests == []


def test_appsync_publish_accepts_the_bound_itself(appsync: AppSyncEdge) -> None:
    response = appsync.client.post(
        "/event",
        json={
            "channel": "/Inbound-Messages/alice",
            "events": [chat(maxTokens=Limits().max_tokens)],
        },
    )
    assert response.json()["failed"] == []
    assert len(appsync.requests) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
        ({"model": "bad\u0000model"}, "model"),
    ],
)
async def test_openai_refuses_out_of_bounds_fields(extra: dict[str, object], param: str) -> None:
    edge = OpenAIEdge()
    body = {"model": "tollgate-local", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions", headers={"authorization": "Bearer k"}, json=body
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert edge.pipeline.requests == []


async def test_an_openai_request_too_large_for_a_kafka_record_is_413() -> None:
    """The body limit lets it in, but its record (and the meter's admission carrying it)
    would exceed the record limit: refused at the edge, not retried for ever downstream."""
    edge = OpenAIEdge()
    limits = Limits()
    many = [{"role": "user", "content": "x" * 1000}] * (limits.max_record_bytes // 1000)
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={"model": "tollgate-local", "messages": many},
        )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["param"] == "messages"
    assert edge.pipeline.requests == []


async def test_an_openai_request_just_under_the_record_limit_passes() -> None:
    edge = OpenAIEdge()
    limits = Limits()
    text = "x" * (limits.max_request_bytes - 2048)
    async with edge.http() as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={"model": "tollgate-local", "messages": [{"role": "user", "content": text}]},
        )
    assert response.status_code == 200, response.text
    [request] = edge.pipeline.requests
    assert len(request.model_dump_json()) <= limits.max_request_bytes
