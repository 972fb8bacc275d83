"""Composition root of the meter service."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tollgate_core import db, topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import (
    ChatRequestV1,
    ChatRequestV2,
    EmbeddingRequestV1,
    UsageRecordV1,
)
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_core.runtime import run_service, start_with_retry, watch_dependency
from tollgate_meter.adapters.catalog import RouterCatalog
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.api import AuthServiceIdentity, UsageApi
from tollgate_meter.batching import AdmissionBatcher, SettlementBatcher
from tollgate_meter.handlers import AdmissionHandler, SettlementHandler
from tollgate_meter.limits import TierConfig
from tollgate_meter.settings import MeterSettings
from tollgate_meter.sweeper import Sweeper

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def utc_now() -> datetime:
    return datetime.now(UTC)


async def serve(settings: MeterSettings, stop: asyncio.Event) -> None:
    health = Health()
    for check in ("postgres", "kafka"):
        health.register(check)
    engine = create_engine(settings.database)
    ledger = PostgresLedger(
        engine, TierConfig.load(settings.tiers_file), bucket_seconds=settings.bucket_seconds
    )
    auth_client = httpx.AsyncClient(timeout=settings.auth_timeout_s)
    catalog = RouterCatalog(auth_client, settings.router_url, refresh_s=settings.catalog_refresh_s)
    http = _http_server(settings, ledger, auth_client, health)
    await http.start()
    producer = EventProducer(
        settings.kafka, client_id="meter", max_record_bytes=settings.limits.max_record_bytes
    )
    admissions, settlements = _consumers(settings, ledger, producer, health, catalog)
    sweeper = Sweeper(
        ledger,
        health,
        utc_now,
        lambda: db.ping(engine),
        ttl_s=settings.reservation_ttl_s,
        interval_s=settings.sweep_interval_s,
        margin_s=settings.reservation_margin_s,
    )

    async def start_postgres() -> None:
        await db.ping(engine)
        if settings.migrate_on_start:
            await db.migrate(settings.database, MIGRATIONS)

    async def start_kafka() -> None:
        await producer.start()
        await admissions.start()
        await settlements.start()

    try:
        if await start_with_retry("postgres", start_postgres, health, stop) and (
            await start_with_retry("kafka", start_kafka, health, stop)
        ):
            sweeper.start()
            catalog.start()
            logger.info("meter ready")
            # not ready while the brokers are lost; the clients reconnect by themselves
            await watch_dependency("kafka", producer.ping, health, stop)
    finally:
        await catalog.stop()
        await sweeper.stop()
        # both drain at once: one after the other they could outlast the pod's grace period
        await asyncio.gather(admissions.stop(), settlements.stop())
        await producer.stop()
        await auth_client.aclose()
        await engine.dispose()
        await http.stop()


def main() -> None:
    settings = MeterSettings()
    run_service("meter", settings.telemetry, lambda stop: serve(settings, stop))


def _http_server(
    settings: MeterSettings, ledger: PostgresLedger, auth_client: httpx.AsyncClient, health: Health
) -> HttpServer:
    """The usage API beside the probes and metrics."""
    api = UsageApi(
        ledger,
        AuthServiceIdentity(auth_client, settings.auth_url),
        utc_now,
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
    )
    app = ops_app(health, api.routes(), metrics=settings.telemetry.metrics_port is None)
    return HttpServer(app, host=settings.host, port=settings.port)


def _consumers(
    settings: MeterSettings,
    ledger: PostgresLedger,
    producer: EventProducer,
    health: Health,
    catalog: RouterCatalog,
) -> tuple[EventConsumer[Any], EventConsumer[Any]]:
    """Admission (``tollgate.requests``) and settlement (``tollgate.usage``)."""
    admissions = EventConsumer(
        settings.kafka,
        name="meter-admission",
        topics=[topics.REQUESTS],
        group_id=settings.consumer_group,
        decoder=Decoder.of(ChatRequestV1, ChatRequestV2, EmbeddingRequestV1),
        handler=AdmissionHandler(
            AdmissionBatcher(ledger, utc_now),
            producer,
            health,
            default_max_tokens=settings.default_max_tokens,
            fail_open=settings.fail_open,
            limits=settings.limits,
            output_limits=catalog.output_limit,
            reservation_ttl_s=settings.reservation_ttl_s,
        ),
        dead_letter=producer,
        concurrency=settings.admission_concurrency,
    )
    settlements = EventConsumer(
        settings.kafka,
        name="meter-settlement",
        topics=[topics.USAGE],
        group_id=f"{settings.consumer_group}-settlement",
        decoder=Decoder.of(UsageRecordV1),
        handler=SettlementHandler(SettlementBatcher(ledger), utc_now),
        dead_letter=producer,
        concurrency=settings.settlement_concurrency,
        min_fetch_wait_ms=settings.settlement_fetch_wait_ms,
    )
    return admissions, settlements
