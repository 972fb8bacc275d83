"""One request is one trace: the edge continues the caller's ``traceparent``, calls auth with
it, and the meter, the router and the provider call hang below, exported over OTLP/gRPC
with each service's name; a streamed answer's chunks are span events, not spans.

The services run as processes of their own on prefixed topics and consumer groups, so that
the session's stack, on the same Kafka, never takes one of their records.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.appsync_client import dev_token
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import Stack, dev_auth_env

pytestmark = pytest.mark.e2e

SERVICES = ("auth", "meter", "router", "stream")
OUTPUT_TOKENS = 12


@dataclass(frozen=True)
class Received:
    service: str
    span: Span

    @property
    def id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                return getattr(value, value.WhichOneof("value") or "string_value")
        return None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace receiver that keeps each span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[Received] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            names = [
                kv.value.string_value
                for kv in resource_spans.resource.attributes
                if kv.key == "service.name"
            ]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Received(names[0] if names else "?", span))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Received]:
        return [r for r in self.spans if r.span.trace_id.hex() == trace_id]


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def traced_stack(
    kafka_broker: TansuBroker,
    embedded_postgres: EmbeddedPostgres,
    collector: tuple[Collector, int],
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    prefix = f"trace-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers, topic_prefix=prefix)
    await ensure_topics(kafka)
    stack = Stack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=embedded_postgres.url,
        log_dir=tmp_path,
        ports={service: free_port() for service in SERVICES},
        services=SERVICES,
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "KAFKA_TOPIC_PREFIX": prefix,
            "TOLLGATE_METER_CONSUMER_GROUP": f"{prefix}meter",
            "TOLLGATE_ROUTER_CONSUMER_GROUP": f"{prefix}router",
            "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "20",
            "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "500",
            "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": str(OUTPUT_TOKENS),
            "TOLLGATE_ROUTER_COALESCE_DELAY_MS": "0",  # one reply chunk per token
            **dev_auth_env(Path(__file__).parents[1]),
        },
    )
    try:
        await asyncio.to_thread(stack.start, timeout=120)
        yield stack
    except BaseException:
        for service in SERVICES:
            print(f"--- {service} ---\n{stack.logs(service)[-4000:]}")  # noqa: T201
        raise
    finally:
        await asyncio.to_thread(stack.stop)


def chunks_of(body: str) -> Iterator[dict[str, Any]]:
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


async def test_one_request_is_one_trace_across_the_four_services(
    traced_stack: Stack, collector: tuple[Collector, int]
) -> None:
    spans = collector[0]
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    token = await dev_token(traced_stack.url("auth"), "tracy")
    async with httpx.AsyncClient(base_url=traced_stack.url("stream"), timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {token}",
                "traceparent": f"00-{trace_id}-{caller_span}-01",
            },
            json={
                "model": "tollgate-local",
                "stream": True,
                "messages": [{"role": "user", "content": "trace me"}],
            },
        )
    assert response.status_code == 200
    text = [c["choices"][0]["delta"].get("content") for c in chunks_of(response.text)]
    assert len([t for t in text if t]) >= OUTPUT_TOKENS

    def named(name: str, service: str) -> list[Received]:
        return [r for r in spans.of_trace(trace_id) if (r.span.name, r.service) == (name, service)]

    wanted = [
        ("POST /v1/chat/completions", "tollgate-stream"),
        ("POST /v1/authorize", "tollgate-auth"),
        ("meter.admit", "tollgate-meter"),
        ("chat tollgate-local", "tollgate-router"),
        ("tollgate.replies process", "tollgate-stream"),
        ("meter.settle", "tollgate-meter"),
    ]
    async with asyncio.timeout(30):
        while not all(named(*w) for w in wanted):
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # the rest of the batch (spans end after their children)
    tree = spans.of_trace(trace_id)
    by_id = {r.id: r for r in tree}

    # one trace, continuing the caller's, across the four services
    assert {r.service for r in tree} == {f"tollgate-{s}" for s in SERVICES}
    [edge] = named("POST /v1/chat/completions", "tollgate-stream")
    assert edge.parent == caller_span
    orphans = [r.span.name for r in tree if r is not edge and r.parent not in by_id]
    assert orphans == []

    def parent_of(received: Received) -> Received:
        return by_id[received.parent]

    # the edge asks auth with the trace's context
    [auth] = named("POST /v1/authorize", "tollgate-auth")
    assert (parent_of(auth).span.name, parent_of(auth).service) == (
        "POST /v1/authorize",
        "tollgate-stream",
    )
    # edge → meter → router, one span per hop
    [admitting] = named("tollgate.requests process", "tollgate-meter")
    assert parent_of(admitting).service == "tollgate-stream"
    [generating] = named("tollgate.admitted process", "tollgate-router")
    assert parent_of(generating).service == "tollgate-meter"
    # the request's span, and inside it one CLIENT span per call to the provider
    [request] = [
        r
        for r in named("chat tollgate-local", "tollgate-router")
        if r.span.kind == Span.SPAN_KIND_INTERNAL
    ]
    [attempt] = [r for r in tree if r.parent == request.id and r.span.kind == Span.SPAN_KIND_CLIENT]
    assert attempt.attribute("gen_ai.operation.name") == "chat"
    assert attempt.attribute("gen_ai.system") == "tollgate.local"
    assert attempt.attribute("gen_ai.request.model")
    assert attempt.attribute("gen_ai.usage.output_tokens") == OUTPUT_TOKENS
    assert request.attribute("gen_ai.usage.input_tokens") > 0
    # → back to the edge: one delivery span for the answer, its chunks as events
    [delivered] = named("tollgate.replies process", "tollgate-stream")
    assert parent_of(delivered).span.name == "tollgate.replies publish"
    assert len([r for r in tree if r.span.name.startswith("tollgate.replies")]) == 2
    chunk_events = [e for e in request.span.events if e.name == "tollgate.replies publish"]
    assert len(chunk_events) >= OUTPUT_TOKENS
    assert len(tree) < OUTPUT_TOKENS + 15, sorted(r.span.name for r in tree)
