"""What the gateway wrote, read back after a fault run: every record of a topic, the
meter's ledger and the analytics dataset."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tollgate_analytics.query import Catalog
from tollgate_core.bus import Decoder
from tollgate_core.bus import headers as h
from tollgate_core.settings import DatabaseSettings, KafkaSettings


async def read_topic(settings: KafkaSettings, topic: str, decoder: Decoder[Any]) -> list[Any]:
    """Every record of ``topic`` up to its end now, decoded (fetch responses carry the high
    watermark; Tansu's ListOffsets may fall short of it)."""
    consumer = AIOKafkaConsumer(fetch_max_wait_ms=5, **settings.client_kwargs())
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        events: list[Any] = []
        async with asyncio.timeout(60):
            while not await _caught_up(consumer, tps):
                for records in (await consumer.getmany(*tps, timeout_ms=200)).values():
                    for record in records:
                        schema = h.to_dict(record.headers).get(h.SCHEMA)
                        events.append(decoder.decode(record.value, schema))
        return events
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    principal: str
    status: str
    reserved_input: int
    reserved_output: int
    input_tokens: int | None
    output_tokens: int | None
    age_s: float


async def read_ledger(database_url: str) -> list[LedgerRow]:
    engine = create_async_engine(DatabaseSettings(database_url=database_url).async_url)  # type: ignore[arg-type]
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT request_id, principal, status, reserved_input, reserved_output,"
                    " input_tokens, output_tokens,"
                    " extract(epoch FROM now() - created_at) AS age_s FROM meter.reservations"
                )
            )
            return [LedgerRow(*row) for row in rows]
    finally:
        await engine.dispose()


def parquet_ids(data_dir: str, table: str) -> Counter[str]:
    """How often each request id is a row of the dataset's ``table``."""
    rows = Catalog(data_dir).query(f"SELECT request_id FROM {table}").rows  # noqa: S608
    return Counter(str(row[0]) for row in rows)
