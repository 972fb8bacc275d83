"""Composition root of the auth service.

The service serves its operational endpoints and checks that Kafka (where it writes audit
events) is reachable; token verification, API keys and policy live in their own modules as
they are added.
"""

from __future__ import annotations

import asyncio
import logging

from tollgate_auth.settings import AuthSettings
from tollgate_core import telemetry
from tollgate_core.bus import EventProducer
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_core.runtime import run, start_with_retry

logger = logging.getLogger(__name__)


async def serve(settings: AuthSettings, stop: asyncio.Event) -> None:
    health = Health()
    health.register("kafka")
    http = HttpServer(ops_app(health), host=settings.host, port=settings.port)
    producer = EventProducer(settings.kafka, client_id="auth")
    await http.start()
    try:
        if await start_with_retry("kafka", producer.start, health, stop):
            logger.info("auth ready")
            await stop.wait()
    finally:
        await producer.stop()
        await http.stop()


def main() -> None:
    settings = AuthSettings()
    tel = telemetry.setup(settings.telemetry, "auth")
    try:
        run(lambda stop: serve(settings, stop))
    finally:
        tel.shutdown()
