"""The Faust application, wired: ``tollgate.logs`` and ``tollgate.usage`` flow from the
:mod:`~tollgate_analytics.source` through the :mod:`~tollgate_analytics.handlers` into the
Parquet :mod:`~tollgate_analytics.sink` and the per-minute aggregates table; the
:mod:`~tollgate_analytics.web` pages serve probes, metrics, SQL and reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from tollgate_analytics import web
from tollgate_analytics.access import AdminAccess
from tollgate_analytics.adapters.storage import LocalStore, ObjectStore, S3Store
from tollgate_analytics.handlers import Handlers
from tollgate_analytics.query import Catalog, Limits
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_analytics.sink import ParquetSink, SinkSettings
from tollgate_analytics.source import Source, changelog_topic, create_faust_app
from tollgate_core.errors import ConfigurationError
from tollgate_core.health import Health

__all__ = ["Analytics", "changelog_topic", "create_app", "create_store"]

KAFKA_CHECK = "kafka"


def create_store(settings: AnalyticsSettings) -> ObjectStore:
    if not settings.s3_bucket:
        return LocalStore(settings.data_dir)
    import boto3

    client = boto3.client(
        "s3", region_name=settings.s3_region, endpoint_url=settings.s3_endpoint_url
    )
    return S3Store(client, settings.s3_bucket, settings.s3_prefix)


@dataclass
class Analytics:
    app: faust.App
    sink: ParquetSink
    health: Health
    catalog: Catalog


def create_app(settings: AnalyticsSettings, store: ObjectStore | None = None) -> Analytics:
    """The worker; ``settings.topic_partitions`` must be known by now (the entrypoint reads
    it from the broker when it is not set)."""
    if settings.topic_partitions is None:
        raise ConfigurationError("the source topics' partition count is not known")
    partitions = settings.topic_partitions
    app = create_faust_app(settings, partitions)
    health = Health()
    health.register(KAFKA_CHECK, "waiting for partitions")
    source = Source(app, settings)
    sink = ParquetSink(
        store or create_store(settings),
        SinkSettings(
            max_bytes=settings.roll_max_bytes,
            max_records=settings.roll_max_records,
            max_age_s=settings.roll_max_age_s,
        ),
        health,
        source.commit,
        log_start=source.log_start,
    )
    table = app.Table("aggregates", default=None, partitions=partitions)
    handlers = Handlers(source, sink, table, settings.aggregate_retention_minutes)
    _subscribe(app, source, handlers)
    _follow_assignment(app, sink, health)
    catalog = Catalog(settings.location, settings.pyarrow_s3_options())
    limits = Limits(timeout_s=settings.query_timeout_s, max_rows=settings.query_max_rows)
    pages = web.DataPages(catalog, AdminAccess(settings.admin_token), limits, table)
    web.register(app, health, pages)
    return Analytics(app, sink, health, catalog)


def _subscribe(app: faust.App, source: Source, handlers: Handlers) -> None:
    @app.agent(source.logs)
    async def request_logs(stream: Any) -> None:
        async for event in stream.events():
            await handlers.on_log(event)

    @app.agent(source.usage)
    async def usage_records(stream: Any) -> None:
        async for event in stream.events():
            await handlers.on_usage(event)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def roll_segments() -> None:
        await handlers.roll_segments()

    @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
    async def expire_aggregates() -> None:
        handlers.expire_aggregates()

    @app.task  # type: ignore[untyped-decorator]
    async def check_storage() -> None:
        await handlers.check_storage()


def _follow_assignment(app: faust.App, sink: ParquetSink, health: Health) -> None:
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        for tp in revoked:
            sink.discard(tp.topic, tp.partition)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if assigned:
            health.ok(KAFKA_CHECK)
