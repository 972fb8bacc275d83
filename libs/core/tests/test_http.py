"""The HTTP side every service shares: ``/metrics`` on the service's port or a port of its
own, and a SERVER span per request continuing the caller's trace."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tollgate_core.health import Health
from tollgate_core.http import HttpServer, metrics_server, ops_app, trace_headers
from tollgate_core.settings import TelemetrySettings


def test_metrics_are_on_the_service_port_by_default() -> None:
    assert metrics_server(TelemetrySettings()) is None
    with TestClient(ops_app(Health())) as client:
        assert client.get("/metrics").status_code == 200


async def test_a_metrics_port_serves_metrics_alone_and_the_service_port_drops_them() -> None:
    settings = TelemetrySettings.model_validate({"TOLLGATE_METRICS_PORT": 0})
    server = metrics_server(settings)
    assert server is not None
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert "python_info" in response.text
            assert (await client.get("/healthz")).status_code == 404
    finally:
        await server.stop()
    with TestClient(ops_app(Health(), metrics=False)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_http_requests_are_server_spans_continuing_the_callers_trace(
    spans: InMemorySpanExporter,
) -> None:
    async def hello(_: Request) -> Response:
        return PlainTextResponse("hi")

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    app = ops_app(Health(), [Route("/hello", hello)])
    with TestClient(app) as client:
        client.get("/hello", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        client.get("/healthz")
        client.get("/metrics")
    [span] = spans.get_finished_spans()
    assert span.name == "GET /hello" and span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200


def test_trace_headers_carry_the_current_span() -> None:
    assert trace_headers() == {}
    with trace.get_tracer("test").start_as_current_span("call") as span:
        headers = trace_headers()
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")


async def test_an_idle_keep_alive_connection_outlives_the_clients_pool() -> None:
    """The server keeps an idle connection open longer than httpx's pool keeps one (5 s),
    so a pooled connection is never closed under a request being sent on it."""
    app = Starlette(routes=[Route("/", lambda _: PlainTextResponse("ok"))])
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        ask = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        for pause in (0.0, 6.0):
            await asyncio.sleep(pause)
            writer.write(ask)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            await reader.readexactly(2)  # "ok"
        writer.close()
    finally:
        await server.stop()
