"""A router killed mid-stream, over a real broker and Postgres: the next router gets the
admission again, finds the journal row streaming and its lease run out, ends the client's
stream with ``stream_interrupted`` and settles it once — it never answers a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tollgate_core import topics
from tollgate_core.bus import Decoder, EventProducer
from tollgate_core.bus import headers as h
from tollgate_core.contracts import (
    REPLY_SCHEMA,
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    ReplyV1,
    TextBlock,
    UsageRecordV1,
)
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import TansuBroker, free_port
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_dev.stack import Stack, run_prepare

pytestmark = pytest.mark.e2e

REPLIES = Decoder.union(REPLY_SCHEMA, ReplyV1)
USAGE = Decoder.of(UsageRecordV1)


def admission(request_id: str) -> AdmissionV1:
    request = ChatRequestV1(
        request_id=request_id,
        principal="kim",
        messages=(ChatMessage(role="user", content=(TextBlock(text="tell me a long story"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
        channel="/Outbound-Messages/kim",
    )
    return AdmissionV1(request=request, reserved_input_tokens=10, reserved_output_tokens=40)


class Tail:
    """Everything on every partition of a topic, decoded, as it arrives."""

    def __init__(self, settings: KafkaSettings, topic: str, decoder: Decoder[Any]) -> None:
        self._consumer = AIOKafkaConsumer(fetch_max_wait_ms=5, **settings.client_kwargs())
        self._topic = topic
        self._decoder = decoder
        self.events: list[Any] = []

    async def __aenter__(self) -> Tail:
        await self._consumer.start()
        await self._consumer.topics()  # metadata, so the partitions are known
        partitions = self._consumer.partitions_for_topic(self._topic) or {0}
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def until(self, predicate: Callable[[list[Any]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                batch = await self._consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        schema = h.to_dict(record.headers).get(h.SCHEMA)
                        self.events.append(self._decoder.decode(record.value, schema))


def of(events: list[Any], request_id: str) -> list[Any]:
    return [e for e in events if e.request_id == request_id]


async def test_a_router_killed_mid_stream_is_ended_and_settled_once_by_the_next(
    database_factory: DatabaseFactory, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    database = await database_factory()
    url = database.database_url.get_secret_value()
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, fetch_max_wait_ms=5)
        await asyncio.to_thread(run_prepare, broker.bootstrap_servers, url)
        stack = Stack(
            bootstrap_servers=broker.bootstrap_servers,
            database_url=url,
            log_dir=tmp_path,
            ports={"router": free_port()},
            services=["router"],
            extra_env={
                "TOLLGATE_ROUTER_CONSUMER_GROUP": unique("router"),
                "TOLLGATE_ROUTER_LEASE_S": "2",
                "TOLLGATE_ROUTER_COALESCE_DELAY_MS": "0",
                # a slow answer: 40 tokens at 4/s, so the kill lands mid-stream
                "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "50",
                "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "4",
                "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": "40",
            },
        )
        killed = unique("killed")
        after = unique("after")
        try:
            await asyncio.to_thread(stack.start, timeout=90)
            async with (
                EventProducer(kafka, client_id="test") as producer,
                Tail(kafka, topics.REPLIES, REPLIES) as replies,
                Tail(kafka, topics.USAGE, USAGE) as usage,
            ):
                await producer.publish(topics.ADMITTED, admission(killed), key="kim")
                await replies.until(
                    lambda e: len([r for r in of(e, killed) if isinstance(r, ReplyChunkV1)]) >= 2,
                    timeout=60,
                )
                first = stack.processes["router"]
                first.kill()  # SIGKILL: no drain, no commit, no lease release
                await asyncio.to_thread(first.wait)
                await asyncio.to_thread(stack.start, timeout=90)  # the next router

                await replies.until(
                    lambda e: any(isinstance(r, ReplyErrorV1) for r in of(e, killed)),
                    timeout=120,
                )
                await usage.until(lambda e: bool(of(e, killed)), timeout=30)
                # the next router still serves new work, to the end
                await producer.publish(topics.ADMITTED, admission(after), key="kim")
                await replies.until(
                    lambda e: any(isinstance(r, ReplyDoneV1) for r in of(e, after)),
                    timeout=60,
                )
                await usage.until(lambda e: bool(of(e, after)), timeout=30)
        finally:
            stack.stop()

    answer = of(replies.events, killed)
    chunks = [r for r in answer if isinstance(r, ReplyChunkV1)]
    assert 2 <= len(chunks) < 40  # the first router's partial answer, never a second one
    assert len({r.seq for r in chunks}) == len(chunks)
    [error] = [r for r in answer if isinstance(r, ReplyErrorV1)]
    assert error.error.type == "stream_interrupted" and error.seq > chunks[-1].seq
    assert not any(isinstance(r, ReplyDoneV1) for r in answer)
    [settled] = of(usage.events, killed)  # once
    assert settled.status == "error"
    [served] = of(usage.events, after)
    assert served.status == "ok" and served.usage.output_tokens == 40
