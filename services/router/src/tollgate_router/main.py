"""Composition root of the router service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_core import db, topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import AdmissionV1, AdmissionV2, EmbeddingAdmissionV1, utcnow
from tollgate_core.errors import TollgateError
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_core.runtime import run_service, start_with_retry, watch_dependency
from tollgate_router.adapters.postgres import PostgresJournal, PostgresPreparedStore
from tollgate_router.api import admin_routes, models_route
from tollgate_router.catalog import CatalogSource, local_catalog
from tollgate_router.handlers import GenerationHandler
from tollgate_router.journal import InMemoryJournal, RequestJournal
from tollgate_router.prepared import InMemoryPreparedStore, PreparedStore
from tollgate_router.providers.registry import ProviderRegistry
from tollgate_router.resilience import ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.settings import RouterSettings
from tollgate_router.streaming import Coalescing
from tollgate_router.tokens import TokenCounters

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def build_catalog(settings: RouterSettings) -> CatalogSource:
    if settings.catalog_file is not None:
        return CatalogSource.from_file(settings.catalog_file)
    local = settings.local_model
    return CatalogSource(
        local_catalog(
            local.name,
            time_to_first_token_ms=local.time_to_first_token_ms,
            tokens_per_second=local.tokens_per_second,
            output_tokens=local.output_tokens,
        )
    )


def build_router(settings: RouterSettings, registry: ProviderRegistry) -> ResilientRouter:
    return ResilientRouter(
        registry,
        retry=RetryPolicy(
            max_retries=settings.max_retries,
            base_delay_s=settings.retry_base_delay_s,
            max_delay_s=settings.retry_max_delay_s,
        ),
        timeouts=Timeouts(
            first_token_s=settings.first_token_timeout_s,
            idle_s=settings.idle_timeout_s,
            total_s=settings.total_timeout_s,
        ),
        breaker_threshold=settings.breaker_threshold,
        breaker_reset_s=settings.breaker_reset_s,
    )


async def _every(
    seconds: float, stop: asyncio.Event, what: str, action: Callable[[], object]
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            return
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        except TollgateError as exc:
            logger.warning("%s failed: %s", what, exc.message)


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    catalog, registry, counters = _models(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, catalog.reload)

    health = Health()
    health.register("kafka")
    engine, journal, prepared = _stores(settings, health)
    app = ops_app(
        health,
        [models_route(catalog), *admin_routes(prepared, settings.admin_token)],
        metrics=settings.telemetry.metrics_port is None,
    )
    http = HttpServer(app, host=settings.host, port=settings.port)
    await http.start()
    producer = EventProducer(settings.kafka, client_id="router")
    handler = GenerationHandler(
        catalog,
        registry,
        producer,
        journal=journal,
        prepared=prepared,
        router=build_router(settings, registry),
        coalescing=Coalescing(settings.coalesce_delay_ms / 1000, settings.coalesce_max_chars),
        lease_s=settings.lease_s,
        admission_max_age_s=settings.admission_max_age_s,
        longest_answer_s=settings.longest_answer_s,
        counters=counters,
    )
    consumer = _consumer(settings, handler, producer)

    async def start_postgres() -> None:
        if engine is None:
            return
        await db.ping(engine)
        if settings.migrate_on_start:
            await db.migrate(settings.database, MIGRATIONS)

    async def start_kafka() -> None:
        await producer.start()
        await consumer.start()

    background = _background(settings, catalog, prepared, stop)
    try:
        if (
            engine is None or await start_with_retry("postgres", start_postgres, health, stop)
        ) and (await start_with_retry("kafka", start_kafka, health, stop)):
            logger.info("router ready")
            # not ready while the brokers are lost; the clients reconnect by themselves
            await watch_dependency("kafka", producer.ping, health, stop)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        loop.remove_signal_handler(signal.SIGHUP)
        await consumer.stop()
        await producer.stop()
        await registry.aclose()
        if engine is not None:
            await engine.dispose()
        await http.stop()


def _consumer(
    settings: RouterSettings, handler: GenerationHandler, producer: EventProducer
) -> EventConsumer[Any]:
    """``tollgate.admitted``, served by ``handler`` up to ``max_concurrent_streams`` at once."""
    return EventConsumer(
        settings.kafka,
        name="router",
        topics=[topics.ADMITTED],
        group_id=settings.consumer_group,
        decoder=Decoder.of(AdmissionV1, AdmissionV2, EmbeddingAdmissionV1),
        handler=handler,
        dead_letter=producer,
        concurrency=settings.max_concurrent_streams,
    )


def _models(settings: RouterSettings) -> tuple[CatalogSource, ProviderRegistry, TokenCounters]:
    """The catalog, with the providers and the tokenizers it names kept in step with it."""
    catalog = build_catalog(settings)
    registry = ProviderRegistry(
        secrets=settings.provider_secrets,
        connect_timeout_s=settings.connect_timeout_s,
        max_connections=max(100, settings.max_concurrent_streams * 2),
    )
    catalog.on_change(registry.sync)
    counters = TokenCounters(settings.catalog_file.parent if settings.catalog_file else None)
    catalog.on_change(lambda c: counters.load_all(m.tokenizer for m in c.models))
    return catalog, registry, counters


def _stores(
    settings: RouterSettings, health: Health
) -> tuple[AsyncEngine | None, RequestJournal, PreparedStore]:
    """The request journal and prepared responses: in Postgres, or in memory without one."""
    if not settings.use_database:
        return None, InMemoryJournal(), InMemoryPreparedStore()
    health.register("postgres")
    # no ping per checkout: the adapters run a statement once more after a dead connection
    engine = db.create_engine(settings.database, application_name="router", pre_ping=False)
    journal = PostgresJournal(engine, settled_batch_s=settings.journal_settled_batch_ms / 1000)
    return engine, journal, PostgresPreparedStore(engine)


def _background(
    settings: RouterSettings, catalog: CatalogSource, prepared: PreparedStore, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """The catalog's file check every second and the purge of expired prepared responses."""
    return [
        asyncio.create_task(_every(1.0, stop, "catalog check", catalog.check)),
        asyncio.create_task(
            _every(
                settings.prepared_purge_interval_s,
                stop,
                "prepared-response purge",
                lambda: prepared.purge_expired(utcnow()),
            )
        ),
    ]


def main() -> None:
    settings = RouterSettings()
    run_service("router", settings.telemetry, lambda stop: serve(settings, stop))
