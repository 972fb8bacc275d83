"""Typed Kafka consumer with at-least-once processing and a dead-letter topic.

* Offsets are committed only for records whose handler finished (or which were
  dead-lettered), never ahead of an unfinished one, so a crash redelivers and never skips.
* ``concurrency > 1`` runs handlers side by side (the router streams many answers at once);
  the committed offset of a partition is then the lowest offset still in flight.
* A record that does not decode (no/unknown schema header, invalid JSON, wrong shape) or whose
  handler fails with a non-retriable error goes to ``tollgate.deadletter`` with the reason
  in headers; the partition moves on. A handler that fails with a *retriable*
  :class:`~tollgate_core.errors.TollgateError` is retried with backoff instead.
* Each record is processed inside a CONSUMER span whose parent is the ``traceparent`` the
  producer wrote, so one request is one trace across services; a record of a stream
  (:attr:`~tollgate_core.contracts.Contract.TRACED_AS_EVENT`, a reply chunk) is processed in
  that context without a span of its own.
* ``accept`` sees a record's headers before anything else: a record it refuses is finished
  without being decoded, traced or handled (the edge skips replies for clients it does not
  hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge

from tollgate_core.bus import headers as h
from tollgate_core.bus.codec import Decoder
from tollgate_core.bus.interfaces import Delivered
from tollgate_core.bus.producer import EventProducer
from tollgate_core.bus.security import verify_tls
from tollgate_core.contracts import Contract
from tollgate_core.errors import ContractError, DependencyUnavailable, TollgateError
from tollgate_core.retry import Backoff
from tollgate_core.settings import KafkaSettings
from tollgate_core.topics import DEAD_LETTER

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.bus")

T = TypeVar("T")
Handler = Callable[[Delivered[T]], Awaitable[None]]

CONSUMED = Counter("tollgate_kafka_consumed_total", "Records handled", ["topic", "consumer"])
SKIPPED = Counter(
    "tollgate_kafka_skipped_total",
    "Records the consumer's accept() refused by their headers",
    ["topic", "consumer"],
)
DEAD_LETTERED = Counter(
    "tollgate_kafka_dead_lettered_total",
    "Records sent to the dead-letter topic",
    ["topic", "consumer", "reason"],
)
HANDLER_RETRIES = Counter(
    "tollgate_kafka_handler_retries_total", "Retriable handler failures", ["topic", "consumer"]
)
LAG = Gauge(
    "tollgate_kafka_consumer_lag",
    "Records behind the high watermark",
    ["topic", "partition", "consumer"],
)


class OffsetTracker:
    """Which offsets of each partition are safe to commit."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is not None:
            pending.discard(offset)

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)

    def to_commit(self) -> dict[TopicPartition, int]:
        """Commit points that moved since the last :meth:`committed` call."""
        points: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else nxt
            if self._committed.get(tp) != point:
                points[tp] = point
        return points

    def committed(self, points: dict[TopicPartition, int]) -> None:
        self._committed.update(points)

    @property
    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer[Any]) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._owner._commit()
        self._owner._tracker.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        logger.info(
            "%s assigned %s", self._owner.name, sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )


class EventConsumer(Generic[T]):
    """Consumes contract events from Kafka and hands them to ``handler``.

    Either joins consumer group ``group_id`` (offsets committed, partitions balanced across
    replicas) or, with ``partitions``, reads exactly those partitions of its one topic
    without a group (the edge's reply partitions), optionally starting from the end.

    ``min_fetch_wait_ms`` is for a consumer whose records nobody waits on (settlement): its
    fetches wait at least that long even while records flow. Against Kafka, whose long poll
    answers as soon as a record arrives, it changes nothing under the default wait; against a
    broker that answers only when the wait runs out (Tansu), it spares the broker and this
    process a poll every few milliseconds, at the price of records arriving up to that late.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        name: str,
        topics: Sequence[str],
        decoder: Decoder[T],
        handler: Handler[T],
        dead_letter: EventProducer,
        group_id: str | None = None,
        partitions: Sequence[int] | None = None,
        concurrency: int = 1,
        from_latest: bool = False,
        commit_interval_s: float = 0.5,
        max_retry_delay_s: float = 10.0,
        max_poll_interval_ms: int = 600_000,
        accept: Callable[[Mapping[str, str]], bool] | None = None,
        min_fetch_wait_ms: int = 0,
    ) -> None:
        if (group_id is None) == (partitions is None):
            raise ValueError("give exactly one of group_id and partitions")
        if partitions is not None and len(topics) != 1:
            raise ValueError("manual partition assignment takes exactly one topic")
        self.name = name
        self._settings = settings
        #: the broker's names (with the configured prefix); records are reported by the
        #: names the code uses
        self._topics = [settings.topic(t) for t in topics]
        self._decoder = decoder
        self._handler = handler
        self._dead_letter = dead_letter
        self._accept = accept
        self._group_id = group_id
        self._partitions = list(partitions) if partitions is not None else None
        self._from_latest = from_latest
        self._commit_interval = commit_interval_s
        self._max_retry_delay = max_retry_delay_s
        self._max_poll_interval_ms = max_poll_interval_ms
        #: the wait of this consumer's fetches while records flow
        self._hot_wait_ms = max(settings.fetch_max_wait_ms, min_fetch_wait_ms)
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._concurrent = concurrency > 1
        self._tracker = OffsetTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_record = 0.0

    async def start(self) -> None:
        if self._consumer is not None:
            return
        self._stopping.clear()
        await verify_tls(self._settings)
        consumer = AIOKafkaConsumer(
            client_id=f"{self._settings.client_id_prefix}-{self.name}",
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest" if self._from_latest else "earliest",
            fetch_max_wait_ms=self._hot_wait_ms,
            max_poll_interval_ms=self._max_poll_interval_ms,
            **self._settings.client_kwargs(),
        )
        try:
            await consumer.start()
            if self._partitions is not None:
                tps = [TopicPartition(self._topics[0], p) for p in self._partitions]
                consumer.assign(tps)
                if self._from_latest:
                    await consumer.seek_to_end(*tps)
            else:
                consumer.subscribe(self._topics, listener=_Rebalance(self))
        except KafkaError as exc:
            await consumer.stop()
            raise DependencyUnavailable(f"Kafka unreachable: {exc}") from exc
        self._consumer = consumer
        self._loop_task = asyncio.create_task(self._run(consumer), name=f"consumer-{self.name}")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish (up to ``drain_timeout_s``), commit
        what finished, and leave the group. Idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        self._stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        if self._loop_task is not None:
            # the loop itself may be busy: running a handler (concurrency 1) or waiting for
            # a free slot; past the deadline that handler is cancelled and redelivered later
            task, self._loop_task = self._loop_task, None
            _, pending = await asyncio.wait({task}, timeout=drain_timeout_s)
            if pending:
                logger.warning(
                    "%s: the handler in progress did not finish in %.1fs; it will be redelivered",
                    self.name,
                    drain_timeout_s,
                )
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:
            remaining = max(0.0, deadline - loop.time())
            _, unfinished = await asyncio.wait(self._tasks, timeout=remaining)
            for task in unfinished:
                task.cancel()
            if unfinished:
                logger.warning(
                    "%s: %d handlers did not finish; they will be redelivered",
                    self.name,
                    len(unfinished),
                )
                await asyncio.wait(unfinished)
        self._consumer = consumer  # _commit needs it once more
        try:
            await self._commit()
        finally:
            self._consumer = None
            await consumer.stop()

    # --- the loop ------------------------------------------------------------------------

    @property
    def fetch_wait_ms(self) -> int | None:
        """The wait of the fetches this consumer sends now (None before it started)."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        wait = getattr(fetcher, "_fetch_max_wait_ms", None)
        return wait if isinstance(wait, int) else None

    def wake(self) -> None:
        """Poll with the short wait again now: a record is expected soon (the edge calls it
        when it sends a request whose replies this consumer will read)."""
        self._last_record = asyncio.get_running_loop().time()
        self._set_fetch_wait(self._hot_wait_ms)

    def _set_fetch_wait(self, wait_ms: int) -> None:
        # aiokafka takes the wait only as a constructor argument; its fetcher reads this
        # attribute for every fetch request it builds, so a change applies from the next one
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and getattr(fetcher, "_fetch_max_wait_ms", None) != wait_ms:
            fetcher._fetch_max_wait_ms = wait_ms

    def _adapt_fetch_wait(self, got_records: bool, now: float) -> None:
        idle_wait = self._settings.fetch_idle_max_wait_ms
        if idle_wait is None:
            return
        if got_records:
            self._last_record = now
            self._set_fetch_wait(self._hot_wait_ms)
        elif (now - self._last_record) * 1000 > self._settings.fetch_idle_after_ms:
            self._set_fetch_wait(max(idle_wait, self._hot_wait_ms))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        self._last_record = last_commit
        while not self._stopping.is_set():
            try:
                # returns as soon as records are there; the timeout only paces an idle loop
                batch = await consumer.getmany(timeout_ms=500, max_records=200)
            except KafkaError as exc:
                logger.warning("%s: fetch failed: %s", self.name, exc)
                await self._sleep(1.0)
                continue
            self._adapt_fetch_wait(any(batch.values()), loop.time())
            for tp, records in batch.items():
                for record in records:
                    if self._stopping.is_set():
                        break
                    await self._dispatch(tp, record)
                if records:
                    self._observe_lag(consumer, tp, records[-1].offset)
            if loop.time() - last_commit >= self._commit_interval:
                await self._commit()
                last_commit = loop.time()

    async def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._tracker.begin(tp, record.offset)
        if not self._concurrent:
            await self._process(tp, record)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._process(tp, record))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _process(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        headers = h.to_dict(record.headers)
        if self._accept is not None and not self._accept(headers):
            SKIPPED.labels(record.topic, self.name).inc()
            self._tracker.done(tp, record.offset)
            return
        try:
            event: T = self._decoder.decode(record.value, headers.get(h.SCHEMA))
        except ContractError as exc:
            if await self._send_to_dead_letter(record, headers, type(exc).__name__, exc.message):
                self._tracker.done(tp, record.offset)
            return
        topic = self._settings.logical_topic(record.topic)
        delivered = Delivered(
            event=event,
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            headers=headers,
        )
        context = h.extract_trace(headers)
        if isinstance(event, Contract) and event.TRACED_AS_EVENT:
            span = trace.get_current_span(context)  # the producer's, not recorded here
            scope = trace.use_span(span, end_on_exit=False)
        else:
            span = tracer.start_span(
                f"{topic} process",
                context=context,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                    "messaging.consumer.group.name": self._group_id or "",
                    "tollgate.request_id": headers.get(h.REQUEST_ID, ""),
                },
            )
            scope = trace.use_span(span, end_on_exit=True)
        with scope:
            finished = await self._handle(delivered, record, headers, span)
        if finished:
            CONSUMED.labels(topic, self.name).inc()
            self._tracker.done(tp, record.offset)

    async def _handle(
        self,
        delivered: Delivered[T],
        record: ConsumerRecord[bytes, bytes],
        headers: dict[str, str],
        span: trace.Span,
    ) -> bool:
        """Run the handler; True when the record is finished (handled or dead-lettered)."""
        backoff = Backoff(0.2, self._max_retry_delay)
        while True:
            try:
                await self._handler(delivered)
                return True
            except TollgateError as exc:
                if not exc.retriable:
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                    return await self._send_to_dead_letter(
                        record, headers, type(exc).__name__, exc.message
                    )
                HANDLER_RETRIES.labels(record.topic, self.name).inc()
                logger.warning(
                    "%s: retriable failure at %s/%d@%d: %s; retrying in %.1fs",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc.message,
                    backoff.delay,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception(
                    "%s: handler failed at %s/%d@%d",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                )
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return await self._send_to_dead_letter(
                    record, headers, "HandlerError", f"{type(exc).__name__}: {exc}"
                )
            if not await backoff.wait(self._stopping):
                return False  # stopping: leave it uncommitted, it will be redelivered

    async def _send_to_dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        headers: dict[str, str],
        reason: str,
        message: str,
    ) -> bool:
        dl_headers = h.dead_letter_headers(
            record.headers,
            f"{reason}: {message}",
            (record.topic, record.partition, record.offset),
            self._group_id or self.name,
        )
        backoff = Backoff(0.2, self._max_retry_delay)
        while True:
            try:
                await self._dead_letter.send_raw(
                    DEAD_LETTER, record.value, key=record.key, headers=dl_headers
                )
            except DependencyUnavailable as exc:
                logger.warning("%s: cannot dead-letter yet: %s", self.name, exc)
                if not await backoff.wait(self._stopping):
                    return False
                continue
            DEAD_LETTERED.labels(
                self._settings.logical_topic(record.topic), self.name, reason
            ).inc()
            logger.warning(
                "%s: dead-lettered %s/%d@%d (request %s): %s: %s",
                self.name,
                record.topic,
                record.partition,
                record.offset,
                headers.get(h.REQUEST_ID, "?"),
                reason,
                message,
            )
            return True

    async def _commit(self) -> None:
        consumer = self._consumer
        if consumer is None or self._group_id is None:
            return
        assigned = consumer.assignment()
        points = {tp: off for tp, off in self._tracker.to_commit().items() if tp in assigned}
        if not points:
            return
        try:
            await consumer.commit(points)
        except KafkaError as exc:
            logger.warning("%s: commit failed (will retry): %s", self.name, exc)
            return
        self._tracker.committed(points)

    def _observe_lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition, last: int) -> None:
        highwater = consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(self._settings.logical_topic(tp.topic), str(tp.partition), self.name).set(
                max(0, highwater - last - 1)
            )

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when stop was requested."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False
