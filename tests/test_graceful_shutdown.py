"""SIGTERM stops a consumer service cleanly: what it processed is committed, so a restart
neither repeats nor skips work."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tollgate_core import topics
from tollgate_core.bus import EventProducer
from tollgate_core.contracts import ChatMessage, ChatRequestV1, ReplyTo, TextBlock
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import Stack, run_prepare, wait_ready

pytestmark = pytest.mark.e2e


def request(principal: str) -> ChatRequestV1:
    return ChatRequestV1(
        principal=principal,
        messages=(ChatMessage(role="user", content=(TextBlock(text="hi"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
    )


def consumed(metrics: str) -> float:
    match = re.search(
        r"^tollgate_kafka_consumed_total"
        r'\{consumer="meter-admission",topic="tollgate.requests"\} (\S+)$',
        metrics,
        re.M,
    )
    return float(match.group(1)) if match else 0.0


async def offsets(
    kafka_settings: KafkaSettings, group: str
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the end offsets of tollgate.requests.

    The ends are the high watermarks that fetch responses carry, not ListOffsets: Tansu 0.6
    answers ListOffsets(latest) with the last batch's base offset + 1, which falls short of
    the end whenever the last batch holds more than one record.
    """
    reader = AIOKafkaConsumer(
        group_id=group,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        **kafka_settings.client_kwargs(),
    )
    await reader.start()
    try:
        tps = [
            TopicPartition(topics.REQUESTS, p)
            for p in reader.partitions_for_topic(topics.REQUESTS) or set()
        ]
        committed = {tp.partition: (await reader.committed(tp)) or 0 for tp in tps}
        reader.assign(tps)
        await reader.seek_to_end(*tps)
        async with asyncio.timeout(30):
            while any(reader.highwater(tp) is None for tp in tps):
                await reader.getmany(*tps, timeout_ms=50)
        ends = {tp.partition: int(reader.highwater(tp)) for tp in tps}
        return committed, ends
    finally:
        await reader.stop()


async def test_sigterm_commits_processed_requests(
    kafka_broker: TansuBroker,
    kafka_settings: KafkaSettings,
    embedded_postgres: EmbeddedPostgres,
    tmp_path: Path,
    unique: Callable[[str], str],
) -> None:
    await asyncio.to_thread(run_prepare, kafka_broker.bootstrap_servers, embedded_postgres.url)
    group = unique("meter")
    stack = Stack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=embedded_postgres.url,
        log_dir=tmp_path,
        ports={"meter": free_port()},
        services=["meter"],
        extra_env={"TOLLGATE_METER_CONSUMER_GROUP": group},
    )
    meter = stack.start_service("meter")
    try:
        await asyncio.to_thread(wait_ready, {"meter": stack.url("meter")}, timeout=60)
        admitted = AIOKafkaConsumer(fetch_max_wait_ms=5, **kafka_settings.client_kwargs())
        await admitted.start()
        tps = [
            TopicPartition(topics.ADMITTED, p)
            for p in admitted.partitions_for_topic(topics.ADMITTED) or set()
        ]
        admitted.assign(tps)
        await admitted.seek_to_end(*tps)
        sent = [request(unique("user")) for _ in range(5)]
        async with EventProducer(kafka_settings, client_id="test") as producer:
            for r in sent:
                await producer.publish(topics.REQUESTS, r, key=r.principal)
        wanted = {r.request_id for r in sent}
        seen: set[str] = set()
        async with asyncio.timeout(60):
            while not wanted <= seen:
                for records in (await admitted.getmany(timeout_ms=200)).values():
                    seen |= {
                        value.decode()
                        for r in records
                        for name, value in r.headers
                        if name == "tollgate-request-id"
                    }
        await admitted.stop()
        # The group started from the beginning of the topic: let it finish every request
        # there is (other tests publish too), then stop it before its periodic commit could.
        _, ends = await offsets(kafka_settings, group)
        async with asyncio.timeout(60), httpx.AsyncClient() as client:
            while consumed((await client.get(f"{stack.url('meter')}/metrics")).text) < sum(
                ends.values()
            ):
                await asyncio.sleep(0.02)

        meter.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(meter.wait, 30) == 0
    finally:
        stack.stop()
    assert "received SIGTERM, stopping" in stack.logs("meter")
    # every processed request is committed; nothing is left to be redone by a restart
    committed, ends = await offsets(kafka_settings, group)
    assert committed == ends
    assert sum(ends.values()) >= 5
