"""A service that loses its broker reports not-ready, and recovers by itself: ready
again, and delivering replies, once the broker is back (cut here by a proxy in front of
Tansu, which Tansu advertises)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.appsync_client import connect
from tests.tcpproxy import TcpProxy
from tollgate_core import topics
from tollgate_core.bus import EventProducer
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.contracts import ReplyChunkV1, new_request_id
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import TansuBroker, free_port
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def readiness(url: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{url}/readyz")
    return response.status_code, response.json()


async def until_ready(url: str, ready: bool, timeout: float) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            status, body = await readiness(url)
            if (status == 200) == ready:
                return body
            await asyncio.sleep(0.5)


@asynccontextmanager
async def behind_a_proxy(
    tmp_path: Path, service: str, env: dict[str, str]
) -> AsyncIterator[tuple[Stack, TcpProxy, KafkaSettings]]:
    """``service`` alone, reaching Tansu through a proxy the test can cut (Tansu advertises
    the proxy's port, so every connection goes through it)."""
    proxy_port = free_port()
    with (
        TansuBroker(advertised_port=proxy_port, log_path=tmp_path / "tansu.log") as broker,
        TcpProxy(broker.port, port=proxy_port) as proxy,
    ):
        kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{proxy_port}", fetch_max_wait_ms=5)
        await ensure_topics(kafka)
        stack = Stack(
            bootstrap_servers=kafka.bootstrap_servers,
            database_url="postgresql://unused@127.0.0.1:1/unused",
            log_dir=tmp_path,
            ports={service: free_port()},
            services=[service],
            extra_env=env,
        )
        try:
            await asyncio.to_thread(stack.start, timeout=60)
            yield stack, proxy, kafka
        except BaseException:
            print(stack.logs(service)[-4000:])  # noqa: T201
            raise
        finally:
            stack.stop()


async def lose_and_regain_kafka(url: str, proxy: TcpProxy) -> None:
    proxy.cut()
    body = await until_ready(url, False, timeout=30)
    assert "Kafka unreachable" in str(body["checks"]), body  # type: ignore[index]
    proxy.restore()
    await until_ready(url, True, timeout=90)


async def test_an_edge_that_loses_kafka_is_not_ready_until_it_is_back(tmp_path: Path) -> None:
    env = {"TOLLGATE_STREAM_AUTH_MODE": "none"}
    async with behind_a_proxy(tmp_path, "stream", env) as (stack, proxy, kafka):
        url = stack.url("stream")
        async with connect(url) as socket:
            await socket.send({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/u1"})
            assert (await socket.receive())["type"] == "subscribe_success"
            await lose_and_regain_kafka(url, proxy)
            # and replies flow to its subscribers again
            request_id = new_request_id()
            async with EventProducer(kafka, client_id="test") as producer:
                await producer.publish(
                    topics.REPLIES,
                    ReplyChunkV1(
                        request_id=request_id,
                        principal="u1",
                        seq=0,
                        channel="/Outbound-Messages/u1",
                        text="back",
                    ),
                    key=request_id,
                )
            async with asyncio.timeout(30):
                async for event in socket.events("s"):
                    if event.get("requestId") == request_id:
                        break


async def test_a_router_that_loses_kafka_is_not_ready_until_it_is_back(tmp_path: Path) -> None:
    """The same watch runs in every service that consumes (meter, router, auth as well)."""
    env = {"TOLLGATE_ROUTER_USE_DATABASE": "false"}
    async with behind_a_proxy(tmp_path, "router", env) as (stack, proxy, _):
        await lose_and_regain_kafka(stack.url("router"), proxy)
