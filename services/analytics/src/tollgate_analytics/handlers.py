"""What the job does with each record, and on its timers: log and usage records become
Parquet rows, log records also count in the per-minute aggregates table."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tollgate_analytics import aggregates, dataset, metrics
from tollgate_analytics.sink import ParquetSink
from tollgate_analytics.source import Source
from tollgate_core.bus import Decoder
from tollgate_core.bus import headers as h
from tollgate_core.contracts import RequestLogV1, UsageRecordV1
from tollgate_core.retry import Backoff

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.analytics")


class Handlers:
    def __init__(
        self, source: Source, sink: ParquetSink, table: Any, retention_minutes: int
    ) -> None:
        self._source = source
        self._sink = sink
        self._table = table
        self._retention_minutes = retention_minutes
        self._logs: Decoder[RequestLogV1] = Decoder.of(RequestLogV1)
        self._usage: Decoder[UsageRecordV1] = Decoder.of(UsageRecordV1)

    async def on_log(self, event: Any) -> None:
        message = event.message
        record: RequestLogV1 | None = await self._source.decode(event, self._logs)
        if record is None:
            await self._to_sink(event, None)
            return
        with tracer.start_as_current_span(
            f"{message.topic} process",
            context=h.extract_trace(h.to_dict(list((event.headers or {}).items()))),
            kind=SpanKind.CONSUMER,
            attributes={"tollgate.request_id": record.request_id},
        ):
            await self._to_sink(
                event,
                dataset.log_row(record, message.partition, message.offset),
                functools.partial(self._count, record, message.partition, message.offset),
            )

    async def on_usage(self, event: Any) -> None:
        message = event.message
        record: UsageRecordV1 | None = await self._source.decode(event, self._usage)
        row = (
            None if record is None else dataset.usage_row(record, message.partition, message.offset)
        )
        await self._to_sink(event, row)

    async def _to_sink(
        self, event: Any, row: dataset.Row | None, on_accept: Callable[[], object] | None = None
    ) -> None:
        message = event.message
        seek = await self._sink.add(
            message.topic,
            message.partition,
            message.offset,
            row,
            size=len(event.value or b""),
            on_accept=on_accept,
            # a valid record whose row a column cannot hold: dead-lettered like a malformed one
            on_reject=functools.partial(self._source.dead_letter, event),
        )
        if seek is not None:
            await self._source.seek(message.topic, message.partition, seek)

    def _count(self, record: RequestLogV1, partition: int, offset: int) -> None:
        """Add ``record`` to its minute's aggregates; each key keeps the last offset it
        counted, so a record read again after a restart is not counted twice."""
        counted = False
        minute = aggregates.minute_of(record.finished_at)
        for dimension, value in (("model", record.model), ("principal", record.principal)):
            key = aggregates.table_key(minute, dimension, value, partition)
            stored = self._table.get(key)
            agg = aggregates.Aggregate.from_dict(stored) if stored else aggregates.Aggregate()
            if agg.apply(record, offset):
                self._table[key] = agg.to_dict()
                counted = True
        if counted:
            metrics.observe(record)

    async def roll_segments(self) -> None:
        await self._sink.flush_due()
        for topic, partition, offset in await self._sink.due_seeks():
            await self._source.seek(topic, partition, offset)

    def expire_aggregates(self) -> None:
        oldest = int(time.time()) // 60 * 60 - self._retention_minutes * 60
        for key in [k for k in list(self._table.keys()) if aggregates.parse_key(k)[0] < oldest]:
            del self._table[key]

    async def check_storage(self) -> None:
        """Until the dataset's storage answers (reported on ``/readyz`` meanwhile)."""
        backoff = Backoff(0.5, 15)
        while True:
            try:
                await self._sink.check()
                return
            except Exception as exc:  # noqa: BLE001 - reported on /readyz, retried
                logger.warning("dataset storage not usable: %s", exc)
            await backoff.wait()
