"""Composition root of the router service."""

from __future__ import annotations

import asyncio
import logging

from tollgate_core import telemetry, topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import AdmissionV1
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_core.runtime import run, start_with_retry
from tollgate_router.handlers import GenerationHandler
from tollgate_router.providers.base import Provider
from tollgate_router.providers.local import LocalProvider
from tollgate_router.settings import RouterSettings

logger = logging.getLogger(__name__)


def build_providers(settings: RouterSettings) -> dict[str, Provider]:
    local = settings.local_model
    return {
        local.name: LocalProvider(
            time_to_first_token_ms=local.time_to_first_token_ms,
            tokens_per_second=local.tokens_per_second,
            output_tokens=local.output_tokens,
        )
    }


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    health = Health()
    health.register("kafka")
    http = HttpServer(ops_app(health), host=settings.host, port=settings.port)
    await http.start()
    producer = EventProducer(settings.kafka, client_id="router")
    consumer = EventConsumer(
        settings.kafka,
        name="router",
        topics=[topics.ADMITTED],
        group_id=settings.consumer_group,
        decoder=Decoder.of(AdmissionV1),
        handler=GenerationHandler(
            build_providers(settings), producer, default_model=settings.default_model
        ),
        dead_letter=producer,
        concurrency=settings.max_concurrent_streams,
    )

    async def start_kafka() -> None:
        await producer.start()
        await consumer.start()

    try:
        if await start_with_retry("kafka", start_kafka, health, stop):
            logger.info("router ready")
            await stop.wait()
    finally:
        await consumer.stop()
        await producer.stop()
        await http.stop()


def main() -> None:
    settings = RouterSettings()
    tel = telemetry.setup(settings.telemetry, "router")
    try:
        run(lambda stop: serve(settings, stop))
    finally:
        tel.shutdown()
