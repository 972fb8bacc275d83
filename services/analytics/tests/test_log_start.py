"""The proof the sink relies on before it accepts an offset gap: the broker's ListOffsets
(earliest), which the worker reads through the Faust consumer (``earliest_offsets``, i.e.
aiokafka's ``beginning_offsets``). Checked against the test session's Tansu broker, whose
ListOffsets(latest) is known to be wrong after multi-record batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tollgate_core.settings import KafkaSettings


async def test_the_log_start_is_the_first_offset_the_broker_serves(
    kafka_settings: KafkaSettings, topic_factory: Callable[..., Any]
) -> None:
    topic = await topic_factory(partitions=2)
    producer = AIOKafkaProducer(linger_ms=50, **kafka_settings.client_kwargs())
    await producer.start()
    try:
        for batch in range(3):  # multi-record batches on partition 0, nothing on 1
            sent = [await producer.send(topic, b"%d" % batch, partition=0) for _ in range(7)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, fetch_max_wait_ms=5, **kafka_settings.client_kwargs()
    )
    await consumer.start()
    try:
        filled, empty = TopicPartition(topic, 0), TopicPartition(topic, 1)
        assert await consumer.beginning_offsets([filled, empty]) == {filled: 0, empty: 0}
        consumer.assign([filled])
        await consumer.seek_to_beginning(filled)
        offsets: list[int] = []
        async with asyncio.timeout(20):
            while len(offsets) < 21:
                batch = await consumer.getmany(filled, timeout_ms=200)
                offsets += [record.offset for record in batch.get(filled, [])]
        assert offsets == list(range(21))  # the log starts where it says it starts
        assert (await consumer.beginning_offsets([filled]))[filled] == offsets[0]
    finally:
        await consumer.stop()
