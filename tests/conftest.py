"""Fixtures for the cross-service tests: the whole gateway as separate processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from tests.edges import Certificate, Edge, edge_process, self_signed
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import SERVICES, Stack, dev_auth_env, run_prepare
from tollgate_router.testing import FakeProviderServer

METER_ADMIN_TOKEN = "meter-admin-test-token"


@pytest.fixture(scope="session")
def otlp_port() -> int:
    return free_port()


class SpanLog:
    """Every span the services export over OTLP, kept from the moment the receiver starts."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def collect(self, receiver: OtelTapHttpProtobufReceiver) -> None:
        async for span in receiver.stream_traces():
            self.spans.append(span)

    async def wait_for(self, predicate: Callable[[Span], bool], timeout: float = 20) -> Span:
        async with asyncio.timeout(timeout):
            while True:
                for span in self.spans:
                    if predicate(span):
                        return span
                await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
async def otlp(otlp_port: int) -> AsyncIterator[SpanLog]:
    receiver = OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=otlp_port))
    await receiver.start()
    log = SpanLog()
    task = asyncio.create_task(log.collect(receiver))
    try:
        yield log
    finally:
        await receiver.stop()
        await task


@pytest.fixture(scope="session")
async def fake_upstream() -> AsyncIterator[FakeProviderServer]:
    """A model provider speaking OpenAI's chat completions, behind the stack's ``fake-gpt``
    model (premium callers only): tests set its ``script``."""
    server = FakeProviderServer()
    await server.start(free_port())
    try:
        yield server
    finally:
        await server.stop()


def stack_catalog(directory: Path, upstream: FakeProviderServer) -> Path:
    """The local model as the stack's default (paced as the tests count on), and
    ``fake-gpt`` served by ``upstream``."""
    catalog = {
        "default_model": "tollgate-local",
        "providers": {
            "local": {
                "type": "local",
                "time_to_first_token_ms": 50,
                "tokens_per_second": 200,
                "output_tokens": 12,
            },
            "fake-openai": {"type": "openai", "base_url": f"{upstream.url}/v1"},
        },
        "models": [
            {"id": "tollgate-local", "provider": "local"},
            {"id": "fake-gpt", "provider": "fake-openai", "groups": ["premium"]},
        ],
    }
    path = directory / "models.json"
    path.write_text(json.dumps(catalog))
    return path


@pytest.fixture(scope="session")
def stack(
    kafka_broker: TansuBroker,
    embedded_postgres: EmbeddedPostgres,
    otlp: SpanLog,
    otlp_port: int,
    fake_upstream: FakeProviderServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    run_prepare(kafka_broker.bootstrap_servers, embedded_postgres.url)
    log_dir = Path(tmp_path_factory.mktemp("stack-logs"))
    catalog = stack_catalog(Path(tmp_path_factory.mktemp("catalog")), fake_upstream)
    analytics_dir = Path(tmp_path_factory.mktemp("analytics"))
    stack = Stack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=embedded_postgres.url,
        log_dir=log_dir,
        ports={service: free_port() for service in SERVICES},
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "50",
            "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "200",
            "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": "12",
            "TOLLGATE_ROUTER_CATALOG_FILE": str(catalog),
            # one reply chunk per token, so the tests can count them
            "TOLLGATE_ROUTER_COALESCE_DELAY_MS": "0",
            "TOLLGATE_ROUTER_ADMIN_TOKEN": "e2e-admin-token",
            "TOLLGATE_LOG_FORMAT": "json",
            "TOLLGATE_ANALYTICS_DATA_DIR": str(analytics_dir / "dataset"),
            "TOLLGATE_ANALYTICS_STATE_DIR": str(analytics_dir / "state"),
            "TOLLGATE_ANALYTICS_ROLL_MAX_AGE_S": "1",
            "TOLLGATE_METER_ADMIN_TOKEN": METER_ADMIN_TOKEN,
            "TOLLGATE_STREAM_METER_ADMIN_TOKEN": METER_ADMIN_TOKEN,
            **dev_auth_env(Path(__file__).parents[1]),
        },
    )
    try:
        stack.start(timeout=120)
        yield stack
    except BaseException:
        for service in SERVICES:
            print(f"--- {service} ---\n{stack.logs(service)[-4000:]}")  # noqa: T201
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def edge_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def tls_edge(
    stack: Stack, edge_certificate: Certificate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """A second edge process on the stack's Kafka, serving HTTPS and WSS."""
    log_dir = Path(tmp_path_factory.mktemp("tls-edge-logs"))
    with edge_process(stack, log_dir, name="stream-tls", certificate=edge_certificate) as edge:
        yield edge
