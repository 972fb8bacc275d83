"""Composition root of the meter service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tollgate_core import db, telemetry, topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import ChatRequestV1, UsageRecordV1
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_core.runtime import run, start_with_retry
from tollgate_meter.adapters.ledger import PostgresLedger
from tollgate_meter.handlers import AdmissionHandler, SettlementHandler
from tollgate_meter.settings import MeterSettings

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


async def serve(settings: MeterSettings, stop: asyncio.Event) -> None:
    health = Health()
    for check in ("postgres", "kafka"):
        health.register(check)
    http = HttpServer(ops_app(health), host=settings.host, port=settings.port)
    await http.start()

    engine = db.create_engine(settings.database, application_name="meter")
    ledger = PostgresLedger(engine)
    producer = EventProducer(settings.kafka, client_id="meter")
    admissions = EventConsumer(
        settings.kafka,
        name="meter-admission",
        topics=[topics.REQUESTS],
        group_id=settings.consumer_group,
        decoder=Decoder.of(ChatRequestV1),
        handler=AdmissionHandler(ledger, producer, default_max_tokens=settings.default_max_tokens),
        dead_letter=producer,
    )
    settlements = EventConsumer(
        settings.kafka,
        name="meter-settlement",
        topics=[topics.USAGE],
        group_id=f"{settings.consumer_group}-settlement",
        decoder=Decoder.of(UsageRecordV1),
        handler=SettlementHandler(ledger),
        dead_letter=producer,
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
            logger.info("meter ready")
            await stop.wait()
    finally:
        await admissions.stop()
        await settlements.stop()
        await producer.stop()
        await engine.dispose()
        await http.stop()


def main() -> None:
    settings = MeterSettings()
    tel = telemetry.setup(settings.telemetry, "meter")
    try:
        run(lambda stop: serve(settings, stop))
    finally:
        tel.shutdown()
