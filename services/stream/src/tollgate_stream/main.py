"""Composition root of the edge (stream) service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from tollgate_core import telemetry, topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import REPLY_SCHEMA, ReplyV1
from tollgate_core.errors import ConfigurationError, DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.http import HttpServer
from tollgate_core.runtime import run, start_with_retry
from tollgate_stream.app import create_app
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import (
    Authorizer,
    AuthServiceAuthorizer,
    ChannelOwnerAuthorizer,
)
from tollgate_stream.replies import Reply, ReplyDispatcher
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

logger = logging.getLogger(__name__)


def build_authorizer(settings: StreamSettings, client: httpx.AsyncClient | None) -> Authorizer:
    if settings.auth_mode == "none" or client is None:
        logger.warning(
            "TOLLGATE_STREAM_AUTH_MODE=none: channels are trusted, no credential is checked"
        )
        return ChannelOwnerAuthorizer()
    return AuthServiceAuthorizer(
        client,
        inbound_namespace=settings.inbound_namespace,
        outbound_namespace=settings.outbound_namespace,
        ttl_s=settings.auth_cache_ttl_s,
    )


async def serve(settings: StreamSettings, stop: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as resources:
        client = None
        if settings.auth_mode == "service":
            client = await resources.enter_async_context(
                httpx.AsyncClient(base_url=settings.auth_url, timeout=settings.auth_timeout_s)
            )
        await _serve(settings, stop, build_authorizer(settings, client))


async def _serve(settings: StreamSettings, stop: asyncio.Event, authorizer: Authorizer) -> None:
    health = Health()
    health.register("kafka")
    producer = EventProducer(settings.kafka, client_id="stream")
    subscriptions = Subscriptions()
    owned: list[int] = []
    gateway = Gateway(settings, producer, authorizer, reply_partitions=owned)
    http = HttpServer(
        create_app(settings, health, gateway, subscriptions),
        host=settings.host,
        port=settings.port,
        ws_max_size=4 * 1024 * 1024,
        ws_ping_interval=None,
    )
    consumers: list[EventConsumer[Reply]] = []

    async def start_kafka() -> None:
        await producer.start()
        available = await producer.partitions_for(topics.REPLIES)
        if not available:
            raise DependencyUnavailable(f"topic {topics.REPLIES} does not exist")
        try:
            owned[:] = settings.owned_partitions(available)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if not consumers:
            consumers.append(
                EventConsumer(
                    settings.kafka,
                    name="stream-replies",
                    topics=[topics.REPLIES],
                    partitions=owned,
                    from_latest=True,
                    decoder=Decoder.union(REPLY_SCHEMA, ReplyV1),
                    handler=ReplyDispatcher(subscriptions),
                    dead_letter=producer,
                )
            )
        await consumers[0].start()
        logger.info("owning reply partitions %s", owned)

    await http.start()
    try:
        if await start_with_retry("kafka", start_kafka, health, stop):
            logger.info("stream ready")
            await stop.wait()
    finally:
        await http.stop()
        for consumer in consumers:
            await consumer.stop()
        await producer.stop()


def main() -> None:
    settings = StreamSettings()
    tel = telemetry.setup(settings.telemetry, "stream")
    try:
        run(lambda stop: serve(settings, stop))
    finally:
        tel.shutdown()
