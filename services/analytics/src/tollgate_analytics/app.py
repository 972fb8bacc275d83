"""The Faust application: consumes ``tollgate.logs`` and ``tollgate.usage`` into the Parquet
dataset, keeps per-minute aggregates in a Faust table, and serves ops pages, SQL and reports.

The source topics are declared without Faust acknowledgements (``acks=False``), so Faust never
commits their offsets by itself; the Parquet sink commits a partition's offset only once the
files holding every record before it are durable, after flushing the producer so the
aggregates' changelog writes for those records are stored too (see
:mod:`tollgate_analytics.sink`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TP
from faust.web import View
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from tollgate_analytics import aggregates, dataset, metrics, reports
from tollgate_analytics.access import AdminAccess
from tollgate_analytics.adapters.storage import LocalStore, ObjectStore, S3Store
from tollgate_analytics.credentials import broker_credentials
from tollgate_analytics.errors import QueryError, Unauthorized
from tollgate_analytics.query import Catalog, Limits, render
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_analytics.sink import ParquetSink, SinkSettings
from tollgate_core.bus import Decoder
from tollgate_core.bus import headers as h
from tollgate_core.contracts import RequestLogV1, UsageRecordV1
from tollgate_core.errors import (
    ConfigurationError,
    ContractError,
    DependencyUnavailable,
    RequestError,
    TollgateError,
)
from tollgate_core.health import Health

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.analytics")

DEAD_LETTERED = Counter(
    "tollgate_analytics_dead_lettered_total", "Malformed records", ["topic", "reason"]
)
KAFKA_CHECK = "kafka"


def create_store(settings: AnalyticsSettings) -> ObjectStore:
    if not settings.s3_bucket:
        return LocalStore(settings.data_dir)
    import boto3

    client = boto3.client(
        "s3", region_name=settings.s3_region, endpoint_url=settings.s3_endpoint_url
    )
    return S3Store(client, settings.s3_bucket, settings.s3_prefix)


def changelog_topic(settings: AnalyticsSettings) -> str:
    return f"{settings.app_id}-aggregates-changelog"


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
    kafka = settings.kafka
    # Faust creates only the last level of its data directory
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        datadir=settings.state_dir,
        web_host=settings.host,
        web_port=settings.port,
        web_bind=settings.host,
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
    )
    health = Health()
    health.register(KAFKA_CHECK, "waiting for partitions")

    async def commit(topic: str, partition: int, next_offset: int) -> None:
        tp = TP(topic, partition)
        consumer = app.consumer
        if tp not in consumer.assignment():
            return  # revoked meanwhile: the next owner re-reads, the markers de-duplicate
        try:
            await app.producer.flush()
            await consumer._commit({tp: next_offset})  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a later segment commits past it again
            logger.warning("cannot commit %s/%d@%d: %s", topic, partition, next_offset, exc)

    async def log_start(topic: str, partition: int) -> int:
        """The partition's earliest offset still in Kafka (ListOffsets(earliest)); what the
        sink needs to tell records deleted by retention from records the stream skipped."""
        tp = TP(topic, partition)
        try:
            offsets = await app.consumer.earliest_offsets(tp)
            return int(offsets[tp])
        except Exception as exc:  # translated: the sink does not accept the gap, it waits
            raise DependencyUnavailable(
                f"cannot list offsets of {topic}/{partition}: {exc}"
            ) from exc

    sink = ParquetSink(
        store or create_store(settings),
        SinkSettings(
            max_bytes=settings.roll_max_bytes,
            max_records=settings.roll_max_records,
            max_age_s=settings.roll_max_age_s,
        ),
        health,
        commit,
        log_start=log_start,
    )
    catalog = Catalog(settings.location, settings.pyarrow_s3_options())
    logs_topic = app.topic(
        settings.logs_topic, value_serializer="raw", key_serializer="raw", acks=False
    )
    usage_topic = app.topic(
        settings.usage_topic, value_serializer="raw", key_serializer="raw", acks=False
    )
    dead_letter = app.topic(
        settings.dead_letter_topic, value_serializer="raw", key_serializer="raw"
    )
    table = app.Table(
        "aggregates",
        default=None,
        partitions=partitions,
    )
    log_decoder: Decoder[RequestLogV1] = Decoder.of(RequestLogV1)
    usage_decoder: Decoder[UsageRecordV1] = Decoder.of(UsageRecordV1)

    async def send_dead_letter(event: Any, exc: ContractError) -> None:
        raw_headers = list((event.headers or {}).items())
        message = event.message
        DEAD_LETTERED.labels(message.topic, type(exc).__name__).inc()
        logger.warning(
            "dead-lettering %s/%d@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            exc.message,
        )
        await dead_letter.send(
            key=event.key,
            value=event.value,
            headers=[
                *raw_headers,
                (h.DLQ_REASON, f"{type(exc).__name__}: {exc.message}"[:1000].encode()),
                (h.DLQ_TOPIC, message.topic.encode()),
                (h.DLQ_PARTITION, str(message.partition).encode()),
                (h.DLQ_OFFSET, str(message.offset).encode()),
                (h.DLQ_GROUP, settings.app_id.encode()),
            ],
        )

    async def decode_or_dead_letter(event: Any, decoder: Decoder[Any]) -> Any:
        headers = h.to_dict(list((event.headers or {}).items()))
        try:
            return decoder.decode(event.value, headers.get(h.SCHEMA))
        except ContractError as exc:
            await send_dead_letter(event, exc)
            return None

    async def to_sink(
        event: Any, row: dataset.Row | None, on_accept: Callable[[], object] | None = None
    ) -> None:
        message = event.message
        seek = await sink.add(
            message.topic,
            message.partition,
            message.offset,
            row,
            size=len(event.value or b""),
            on_accept=on_accept,
            # a valid record whose row a column cannot hold: dead-lettered like a malformed one
            on_reject=functools.partial(send_dead_letter, event),
        )
        if seek is not None:
            await app.consumer.seek(TP(message.topic, message.partition), seek)

    def count(record: RequestLogV1, partition: int, offset: int) -> None:
        """Add ``record`` to its minute's aggregates; each key keeps the last offset it
        counted, so a record read again after a restart is not counted twice."""
        counted = False
        minute = aggregates.minute_of(record.finished_at)
        for dimension, value in (("model", record.model), ("principal", record.principal)):
            key = aggregates.table_key(minute, dimension, value, partition)
            stored = table.get(key)
            agg = aggregates.Aggregate.from_dict(stored) if stored else aggregates.Aggregate()
            if agg.apply(record, offset):
                table[key] = agg.to_dict()
                counted = True
        if counted:
            metrics.observe(record)

    @app.agent(logs_topic)
    async def request_logs(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            record: RequestLogV1 | None = await decode_or_dead_letter(event, log_decoder)
            if record is None:
                await to_sink(event, None)
                continue
            with tracer.start_as_current_span(
                f"{message.topic} process",
                context=h.extract_trace(h.to_dict(list((event.headers or {}).items()))),
                kind=SpanKind.CONSUMER,
                attributes={"tollgate.request_id": record.request_id},
            ):
                await to_sink(
                    event,
                    dataset.log_row(record, message.partition, message.offset),
                    functools.partial(count, record, message.partition, message.offset),
                )

    @app.agent(usage_topic)
    async def usage_records(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            record: UsageRecordV1 | None = await decode_or_dead_letter(event, usage_decoder)
            row = (
                dataset.usage_row(record, message.partition, message.offset)
                if record is not None
                else None
            )
            await to_sink(event, row)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def roll_segments() -> None:
        await sink.flush_due()
        for topic, partition, offset in await sink.due_seeks():
            await app.consumer.seek(TP(topic, partition), offset)

    @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
    async def expire_aggregates() -> None:
        oldest = int(time.time()) // 60 * 60 - settings.aggregate_retention_minutes * 60
        for key in [k for k in list(table.keys()) if aggregates.parse_key(k)[0] < oldest]:
            del table[key]

    @app.task  # type: ignore[untyped-decorator]
    async def check_storage() -> None:
        delay = 0.5
        while True:
            try:
                await sink.check()
                return
            except Exception as exc:  # noqa: BLE001 - reported on /readyz, retried
                logger.warning("dataset storage not usable: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        for tp in revoked:
            sink.discard(tp.topic, tp.partition)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if assigned:
            health.ok(KAFKA_CHECK)

    # --- HTTP ---------------------------------------------------------------------------

    access = AdminAccess(settings.admin_token)
    limits = Limits(timeout_s=settings.query_timeout_s, max_rows=settings.query_max_rows)

    def error_response(view: Any, exc: TollgateError) -> Any:
        body: dict[str, Any] = {"type": exc.error_type, "message": exc.message}
        if exc.details:
            body["details"] = exc.details
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return view.json({"error": body}, status=exc.http_status, headers=headers)

    def refused(view: Any, request: Any) -> Any | None:
        """An error response unless the caller gave the admin token."""
        try:
            access.check(request.headers.get("Authorization"))
        except RequestError as exc:
            return error_response(view, exc)
        return None

    def bad_format(view: Any, fmt: str) -> Any | None:
        if fmt in ("json", "csv", "table"):
            return None
        return error_response(view, RequestError("format is json, csv or table"))

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready = health.ready
        return self.json({"ready": ready, "checks": health.report()}, status=200 if ready else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def answer(self: Any, fmt: str, run: Callable[[], Any]) -> Any:
        """Run a query in a thread (DuckDB blocks); ``limits`` interrupt it and cap it."""
        try:
            result = await asyncio.to_thread(run)
        except QueryError as exc:
            return error_response(self, exc)
        if fmt == "json":
            return self.json(_jsonable(result))
        text = render(result, fmt)
        return self.text(text, content_type="text/csv" if fmt == "csv" else "text/plain")

    async def run_sql(view: Any, request: Any, body: str | None) -> Any:
        if (denied := refused(view, request)) is not None:
            return denied
        sql = body or request.query.get("sql")
        fmt = request.query.get("format", "json")
        if not sql:
            return error_response(view, RequestError("give sql"))
        if (bad := bad_format(view, fmt)) is not None:
            return bad
        return await answer(view, fmt, lambda: catalog.query(sql, limits=limits))

    @app.page("/query")
    class Query(View):
        """GET with ``?sql=``, or POST with the SQL as the body."""

        async def get(self, request: Any) -> Any:
            return await run_sql(self, request, None)

        async def post(self, request: Any) -> Any:
            return await run_sql(self, request, await request.text())

    @app.page("/reports/{name}")
    async def report(self: Any, request: Any, name: str) -> Any:
        if (denied := refused(self, request)) is not None:
            return denied
        canned = reports.REPORTS.get(name)
        if canned is None:
            return self.json(
                {
                    "error": {
                        "type": "not_found",
                        "message": f"no report {name!r}",
                        "details": {"reports": sorted(reports.REPORTS)},
                    }
                },
                status=404,
            )
        fmt = request.query.get("format", "json")
        if (bad := bad_format(self, fmt)) is not None:
            return bad
        try:
            params = reports.window(request.query.get("day"), int(request.query.get("days", "1")))
        except ValueError as exc:
            return error_response(self, RequestError(str(exc)))
        return await answer(self, fmt, lambda: catalog.query(canned.sql, params, limits))

    @app.page("/aggregates")
    async def live_aggregates(self: Any, request: Any) -> Any:
        if (denied := refused(self, request)) is not None:
            return denied
        dimension = request.query.get("dimension", "model")
        try:
            minutes = int(request.query.get("minutes", "60"))
        except ValueError:
            return error_response(self, RequestError("minutes is a whole number"))
        since = int(time.time()) // 60 * 60 - (minutes - 1) * 60
        items = [(k, v) for k, v in list(table.items()) if v]
        merged = aggregates.rollup(items, dimension, since)
        return self.json({name: agg.summary() for name, agg in sorted(merged.items())})

    return Analytics(app, sink, health, catalog)


def _jsonable(result: Any) -> list[dict[str, Any]]:
    import json

    return list(json.loads(render(result, "json")))
