"""The bus against a real Kafka protocol peer (Tansu)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from tollgate_core.bus import Decoder, Delivered, EventConsumer, EventProducer
from tollgate_core.bus import headers as h
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.contracts import ReplyChunkV1, Usage, UsageRecordV1
from tollgate_core.errors import DependencyUnavailable, RecordTooLarge, TollgateError
from tollgate_core.settings import KafkaSettings
from tollgate_core.topics import DEAD_LETTER, TopicSpec
from tollgate_dev.pytest_plugin import TopicFactory


def usage(request_id: str) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id, principal="alice", model="m", provider="local", usage=Usage()
    )


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[EventProducer]:
    async with EventProducer(kafka_settings, client_id="test") as producer:
        yield producer


class Collector:
    def __init__(self) -> None:
        self.items: list[Delivered[UsageRecordV1]] = []
        self.trace_ids: list[int] = []
        self.arrived = asyncio.Event()
        self.failures: dict[str, list[Exception]] = {}

    async def __call__(self, delivered: Delivered[UsageRecordV1]) -> None:
        planned = self.failures.get(delivered.event.request_id)
        if planned:
            raise planned.pop(0)
        self.items.append(delivered)
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        self.arrived.set()

    async def wait_for(self, n: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self.arrived.clear()
                await self.arrived.wait()


def consumer_for(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    topic: str,
    handler: Callable[[Delivered[UsageRecordV1]], Awaitable[None]],
    **options: Any,
) -> EventConsumer[UsageRecordV1]:
    options.setdefault("partitions", [0])
    options.setdefault("name", "test")
    return EventConsumer(
        kafka_settings,
        topics=[topic],
        decoder=Decoder.of(UsageRecordV1),
        handler=handler,
        dead_letter=producer,
        **options,
    )


async def redelivered(
    kafka_settings: KafkaSettings, producer: EventProducer, topic: str, group: str, n: int
) -> list[str]:
    """The request ids the next consumer of ``group`` is handed, up to ``n``."""
    collector = Collector()
    consumer = consumer_for(
        kafka_settings, producer, topic, collector, name="next", group_id=group, partitions=None
    )
    await consumer.start()
    try:
        await collector.wait_for(n)
    finally:
        await consumer.stop()
    return [d.event.request_id for d in collector.items]


async def dead_letters_for(kafka_settings: KafkaSettings, topic: str, n: int) -> list[Any]:
    reader = AIOKafkaConsumer(
        auto_offset_reset="earliest", fetch_max_wait_ms=5, **kafka_settings.client_kwargs()
    )
    await reader.start()
    try:
        reader.assign([TopicPartition(DEAD_LETTER, p) for p in range(3)])
        found: list[Any] = []
        async with asyncio.timeout(30):
            while len(found) < n:
                batch = await reader.getmany(timeout_ms=200)
                for records in batch.values():
                    found += [r for r in records if h.to_dict(r.headers).get(h.DLQ_TOPIC) == topic]
        return found
    finally:
        await reader.stop()


async def test_produce_and_consume_with_headers(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory()
    collector = Collector()
    consumer = consumer_for(kafka_settings, producer, topic, collector)
    await consumer.start()
    try:
        await producer.publish(topic, usage("r-1"), key="alice")
        await collector.wait_for(1)
    finally:
        await consumer.stop()
    got = collector.items[0]
    assert got.event == usage("r-1").model_copy(update={"occurred_at": got.event.occurred_at})
    assert got.key == "alice"
    assert got.headers[h.SCHEMA] == "tollgate.usage.v1"
    assert got.headers[h.REQUEST_ID] == "r-1"
    assert got.headers[h.PRINCIPAL] == "alice"
    assert got.headers[h.TRACEPARENT].startswith("00-")


async def test_trace_context_is_carried_across_produce_and_consume(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    topic_factory: TopicFactory,
    spans: InMemorySpanExporter,
) -> None:
    topic = await topic_factory()
    collector = Collector()
    consumer = consumer_for(kafka_settings, producer, topic, collector)
    await consumer.start()
    tracer = trace.get_tracer("test")
    try:
        with tracer.start_as_current_span("client request") as root:
            await producer.publish(topic, usage("r-trace"))
        await collector.wait_for(1)
    finally:
        await consumer.stop()
    trace_id = root.get_span_context().trace_id
    assert collector.trace_ids == [trace_id]
    finished = {s.name: s for s in spans.get_finished_spans()}
    publish, process = finished[f"{topic} publish"], finished[f"{topic} process"]
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.context.trace_id == trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id


async def test_poison_records_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    await ensure_topics(kafka_settings, [TopicSpec(DEAD_LETTER, 3, 3_600_000)])
    topic = await topic_factory()
    collector = Collector()
    await producer.send_raw(topic, b'{"request_id": "x"}')  # no schema header
    await producer.send_raw(topic, b"\x00\xff not json", headers=[(h.SCHEMA, b"tollgate.usage.v1")])
    await producer.send_raw(
        topic,
        usage("future").model_dump_json().encode(),
        headers=[(h.SCHEMA, b"tollgate.usage.v9")],
    )
    await producer.publish(topic, usage("good"))
    consumer = consumer_for(kafka_settings, producer, topic, collector)
    await consumer.start()
    try:
        await collector.wait_for(1)
    finally:
        await consumer.stop()
    assert [d.event.request_id for d in collector.items] == ["good"]

    def dead_lettered(reason: str) -> float | None:
        labels = {"topic": topic, "consumer": "test", "reason": reason}
        return REGISTRY.get_sample_value("tollgate_kafka_dead_lettered_total", labels)

    assert dead_lettered("ContractError") == 1
    assert dead_lettered("UnsupportedSchemaError") == 2
    dead = await dead_letters_for(kafka_settings, topic, 3)
    reasons = sorted(h.to_dict(r.headers)[h.DLQ_REASON].split(":")[0] for r in dead)
    assert reasons == ["ContractError", "UnsupportedSchemaError", "UnsupportedSchemaError"]
    offsets = sorted(int(h.to_dict(r.headers)[h.DLQ_OFFSET]) for r in dead)
    assert offsets == [0, 1, 2]
    assert dead[0].value is not None  # the original bytes are kept for replay


async def test_handler_errors_retriable_are_retried_others_dead_lettered(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    await ensure_topics(kafka_settings, [TopicSpec(DEAD_LETTER, 3, 3_600_000)])
    topic = await topic_factory()
    collector = Collector()
    collector.failures = {
        "flaky": [DependencyUnavailable("db down"), DependencyUnavailable("db down")],
        "bad": [TollgateError("cannot ever work")],
    }
    for request_id in ("flaky", "bad", "after"):
        await producer.publish(topic, usage(request_id))
    consumer = consumer_for(kafka_settings, producer, topic, collector)
    await consumer.start()
    try:
        await collector.wait_for(2)
    finally:
        await consumer.stop()
    assert [d.event.request_id for d in collector.items] == ["flaky", "after"]
    dead = await dead_letters_for(kafka_settings, topic, 1)
    assert h.to_dict(dead[0].headers)[h.REQUEST_ID] == "bad"


async def test_group_commits_only_finished_work_and_redelivers_the_rest(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    topic_factory: TopicFactory,
    unique: Callable[[str], str],
) -> None:
    topic = await topic_factory()
    group = unique("group")
    release = asyncio.Event()
    seen: list[str] = []

    async def stuck_on_second(delivered: Delivered[UsageRecordV1]) -> None:
        seen.append(delivered.event.request_id)
        if delivered.event.request_id == "second":
            await release.wait()  # never set: the process "dies" while handling it

    first_run = EventConsumer(
        kafka_settings,
        name="run-1",
        topics=[topic],
        group_id=group,
        decoder=Decoder.of(UsageRecordV1),
        handler=stuck_on_second,
        dead_letter=producer,
        concurrency=4,
    )
    for request_id in ("first", "second", "third"):
        await producer.publish(topic, usage(request_id))
    await first_run.start()
    async with asyncio.timeout(30):
        while len(seen) < 3:
            await asyncio.sleep(0.05)
    await first_run.stop(drain_timeout_s=0.2)
    # "first" was committed; "second" was not finished, so it and everything after it return.
    assert await redelivered(kafka_settings, producer, topic, group, 2) == ["second", "third"]


async def test_start_and_stop_are_idempotent(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory()
    consumer = consumer_for(kafka_settings, producer, topic, Collector())
    await consumer.start()
    await consumer.start()
    await consumer.stop()
    await consumer.stop()
    await producer.stop()
    await producer.stop()
    assert not producer.started


async def test_unreachable_kafka_is_a_typed_retriable_error() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000)
    producer = EventProducer(settings, client_id="nowhere")
    with pytest.raises(DependencyUnavailable) as info:
        await producer.start()
    assert info.value.retriable


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_stop_is_bounded_by_the_drain_timeout_and_the_unfinished_work_comes_back(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    topic_factory: TopicFactory,
    unique: Callable[[str], str],
    concurrency: int,
) -> None:
    # every handler hangs: with concurrency 1 the consumer's own loop is inside one, with 2
    # both slots are taken and the loop waits for a third
    topic = await topic_factory()
    group = unique("group")
    started: list[str] = []

    async def hang(delivered: Delivered[UsageRecordV1]) -> None:
        started.append(delivered.event.request_id)
        await asyncio.Event().wait()

    stuck = consumer_for(
        kafka_settings,
        producer,
        topic,
        hang,
        name="stuck",
        group_id=group,
        partitions=None,
        concurrency=concurrency,
    )
    for request_id in ("a", "b", "c"):
        await producer.publish(topic, usage(request_id))
    await stuck.start()
    async with asyncio.timeout(30):
        while len(started) < concurrency:
            await asyncio.sleep(0.05)
    stopping = asyncio.create_task(stuck.stop(drain_timeout_s=0.5))
    done, _ = await asyncio.wait({stopping}, timeout=30)  # unbounded, it would never end
    if not done:
        stopping.cancel()
    assert stopping in done
    stopping.result()
    assert await redelivered(kafka_settings, producer, topic, group, 3) == ["a", "b", "c"]


async def test_an_idle_consumer_polls_slowly_and_the_first_record_speeds_it_up(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory()
    settings = kafka_settings.model_copy(
        update={"fetch_max_wait_ms": 5, "fetch_idle_max_wait_ms": 400, "fetch_idle_after_ms": 300}
    )
    collector = Collector()
    consumer = consumer_for(settings, producer, topic, collector)
    await consumer.start()
    try:
        assert consumer.fetch_wait_ms == 5
        async with asyncio.timeout(10):
            while consumer.fetch_wait_ms != 400:  # idle for 300 ms: the long wait
                await asyncio.sleep(0.05)
        await producer.publish(topic, usage("wakes-it"), partition=0)
        await collector.wait_for(1)
        assert consumer.fetch_wait_ms == 5  # records flow: the short wait again
        async with asyncio.timeout(10):
            while consumer.fetch_wait_ms != 400:
                await asyncio.sleep(0.05)
        consumer.wake()  # a caller that expects a record soon
        assert consumer.fetch_wait_ms == 5
    finally:
        await consumer.stop()


async def test_without_an_idle_wait_the_consumer_keeps_its_wait(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory()
    settings = kafka_settings.model_copy(update={"fetch_max_wait_ms": 20})
    consumer = consumer_for(settings, producer, topic, Collector())
    await consumer.start()
    try:
        await asyncio.sleep(0.5)
        assert settings.fetch_idle_max_wait_ms is None
        assert consumer.fetch_wait_ms == 20
    finally:
        await consumer.stop()


async def test_a_consumer_nobody_waits_on_keeps_a_longer_wait_while_records_flow(
    kafka_settings: KafkaSettings, producer: EventProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory()
    settings = kafka_settings.model_copy(
        update={"fetch_max_wait_ms": 5, "fetch_idle_max_wait_ms": 40, "fetch_idle_after_ms": 300}
    )
    collector = Collector()
    consumer = consumer_for(settings, producer, topic, collector, min_fetch_wait_ms=100)
    await consumer.start()
    try:
        assert consumer.fetch_wait_ms == 100
        await producer.publish(topic, usage("slowly"), partition=0)
        await collector.wait_for(1)
        assert consumer.fetch_wait_ms == 100  # records flow, the wait stays
        await asyncio.sleep(0.6)
        assert consumer.fetch_wait_ms == 100  # idle: the idle wait never shortens it
        consumer.wake()
        assert consumer.fetch_wait_ms == 100
    finally:
        await consumer.stop()
    # against a long poll (Kafka's defaults) a shorter floor changes nothing
    long_poll = kafka_settings.model_copy(update={"fetch_max_wait_ms": 500})
    consumer = consumer_for(long_poll, producer, topic, collector, min_fetch_wait_ms=100)
    await consumer.start()
    try:
        assert consumer.fetch_wait_ms == 500
    finally:
        await consumer.stop()


async def test_a_record_too_large_is_refused_without_retry(
    kafka_settings: KafkaSettings, topic_factory: TopicFactory
) -> None:
    """A record over the limit raises a non-retriable error (a consumer dead-letters it
    instead of retrying for ever and holding back its partition)."""
    topic = await topic_factory()
    big = UsageRecordV1(
        request_id="big", principal="p" * 40_000, model="m", provider="local", usage=Usage()
    )
    async with EventProducer(kafka_settings, client_id="t", max_record_bytes=20_000) as small:
        with pytest.raises(RecordTooLarge) as caught:
            await small.publish(topic, big)
        assert not caught.value.retriable
        await small.publish(topic, usage("fits"))
    async with EventProducer(kafka_settings, client_id="t") as default:
        huge = UsageRecordV1(
            request_id="huge",
            principal="p" * 1_100_000,
            model="m",
            provider="local",
            usage=Usage(),
        )
        with pytest.raises(RecordTooLarge):
            await default.publish(topic, huge)


async def test_a_topic_prefix_puts_records_on_prefixed_topics_under_the_same_names(
    kafka_settings: KafkaSettings, topic_factory: TopicFactory, unique: Callable[[str], str]
) -> None:
    prefixed = kafka_settings.model_copy(update={"topic_prefix": unique("rel") + "."})
    topic = "tollgate.usage"
    await topic_factory(prefixed.topic(topic))
    collector = Collector()
    async with EventProducer(prefixed, client_id="test") as producer:
        assert await producer.partitions_for(topic) == {0}
        consumer = consumer_for(prefixed, producer, topic, collector)
        await consumer.start()
        try:
            await producer.publish(topic, usage("r-prefixed"))
            await collector.wait_for(1)
        finally:
            await consumer.stop()
    [got] = collector.items
    assert got.topic == topic and got.event.request_id == "r-prefixed"
    assert prefixed.logical_topic(prefixed.topic(topic)) == topic


async def test_stream_records_are_events_of_the_producers_span_not_spans_of_their_own(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    topic_factory: TopicFactory,
    spans: InMemorySpanExporter,
) -> None:
    topic = await topic_factory()
    seen: list[tuple[int, int]] = []
    arrived = asyncio.Event()

    async def handler(delivered: Delivered[ReplyChunkV1]) -> None:
        context = trace.get_current_span().get_span_context()
        seen.append((context.trace_id, context.span_id))
        if len(seen) == 3:
            arrived.set()

    consumer = EventConsumer(
        kafka_settings,
        name="chunks",
        topics=[topic],
        partitions=[0],
        decoder=Decoder.of(ReplyChunkV1),
        handler=handler,
        dead_letter=producer,
    )
    await consumer.start()
    try:
        with trace.get_tracer("test").start_as_current_span("chat model") as chat:
            for seq in range(3):
                chunk = ReplyChunkV1(request_id="r-s", principal="alice", seq=seq, text="x")
                await producer.publish(topic, chunk)
        async with asyncio.timeout(30):
            await arrived.wait()
    finally:
        await consumer.stop()
    context = chat.get_span_context()
    assert seen == [(context.trace_id, context.span_id)] * 3
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["chat model"]
    [finished] = spans.get_finished_spans()
    assert [e.attributes["tollgate.seq"] for e in finished.events if e.attributes] == [0, 1, 2]
