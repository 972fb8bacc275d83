"""Composition root of the auth service: Postgres (keys, policy), Kafka (audit), HTTP."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from tollgate_auth.adapters.postgres import PostgresApiKeyStore, PostgresPolicyStore
from tollgate_auth.app import build, create_app
from tollgate_auth.settings import AuthSettings
from tollgate_core import db
from tollgate_core.bus import EventProducer
from tollgate_core.health import Health
from tollgate_core.http import HttpServer
from tollgate_core.runtime import run_service, start_with_retry, watch_dependency

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


async def serve(settings: AuthSettings, stop: asyncio.Event) -> None:
    health = Health()
    for check in ("postgres", "kafka"):
        health.register(check)
    engine = db.create_engine(settings.database, application_name="auth")
    producer = EventProducer(settings.kafka, client_id="auth")
    async with httpx.AsyncClient(timeout=5.0) as client:
        components = build(
            settings,
            key_store=PostgresApiKeyStore(engine),
            policy_store=PostgresPolicyStore(engine),
            publisher=producer,
            http=client,
        )
        if components.dev_idp is not None:
            logger.warning(
                "the development identity provider is ON (issuer %s)", settings.dev_issuer
            )
        app = create_app(components, health, metrics=settings.telemetry.metrics_port is None)
        http = HttpServer(app, host=settings.host, port=settings.port)
        await http.start()

        async def start_postgres() -> None:
            await db.ping(engine)
            if settings.migrate_on_start:
                await db.migrate(settings.database, MIGRATIONS)

        try:
            if await start_with_retry("postgres", start_postgres, health, stop) and (
                await start_with_retry("kafka", producer.start, health, stop)
            ):
                logger.info("auth ready")
                # not ready while the brokers are lost; the clients reconnect by themselves
                await watch_dependency("kafka", producer.ping, health, stop)
        finally:
            await http.stop()
            await producer.stop()
            await engine.dispose()


def main() -> None:
    settings = AuthSettings()
    run_service("auth", settings.telemetry, lambda stop: serve(settings, stop))
