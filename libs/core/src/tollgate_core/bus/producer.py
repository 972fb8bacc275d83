"""Typed Kafka producer: contract events in, acknowledged records out, trace context in headers."""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from tollgate_core.bus import headers as h
from tollgate_core.bus.codec import encode
from tollgate_core.bus.security import verify_tls
from tollgate_core.contracts import Contract
from tollgate_core.errors import DependencyUnavailable, RecordTooLarge
from tollgate_core.limits import DEFAULT_MAX_RECORD_BYTES
from tollgate_core.settings import KafkaSettings

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.bus")

PRODUCED = Counter("tollgate_kafka_produced_total", "Records produced", ["topic"])
PRODUCE_ERRORS = Counter("tollgate_kafka_produce_errors_total", "Failed produces", ["topic"])
#: what a record adds to its value on the wire (key, headers, batch framing)
RECORD_OVERHEAD_BYTES = 64 * 1024


class EventProducer:
    """Publishes contract events. ``start``/``stop`` are idempotent and ``stop`` flushes.

    Delivery is at-least-once: ``publish`` returns after the broker acknowledged the record
    (``acks=all``), so a consumer that commits after publishing never loses an output. The
    producer is not idempotent (not every Kafka-compatible broker supports it); consumers
    de-duplicate by ``request_id`` instead.

    A value larger than ``max_record_bytes`` (``TOLLGATE_LIMIT_MAX_RECORD_BYTES``) is refused
    before it is sent, and a broker's "too large" answer likewise, with
    :class:`RecordTooLarge`: not retriable, so a consumer dead-letters instead of retrying
    it for ever and holding back its partition.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self._settings = settings
        self._max_record_bytes = max_record_bytes
        self._client_id = f"{settings.client_id_prefix}-{client_id}"
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if self._producer is not None:
            warnings.warn(
                f"unclosed EventProducer {self._client_id}", ResourceWarning, stacklevel=1
            )

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        if self._producer is not None:
            return
        await verify_tls(self._settings)
        producer = AIOKafkaProducer(
            client_id=self._client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=self._settings.linger_ms,
            compression_type=None,
            max_request_size=self._max_record_bytes + RECORD_OVERHEAD_BYTES,
            **self._settings.client_kwargs(),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise DependencyUnavailable(f"Kafka unreachable: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await producer.flush()
        finally:
            await producer.stop()

    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        headers: h.Headers = [(h.SCHEMA, event.SCHEMA.encode())]
        request_id = getattr(event, "request_id", None)
        if isinstance(request_id, str):
            headers.append((h.REQUEST_ID, request_id.encode()))
        principal = getattr(event, "principal", None) or getattr(
            getattr(event, "request", None), "principal", None
        )
        if isinstance(principal, str):
            headers.append((h.PRINCIPAL, principal.encode()))
        if hasattr(event, "channel"):  # empty: an event that could name one and does not
            headers.append((h.CHANNEL, (getattr(event, "channel", None) or "").encode()))
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": self._settings.topic(topic),
            "tollgate.request_id": request_id or "",
        }
        if event.TRACED_AS_EVENT:
            seq = getattr(event, "seq", None)
            if isinstance(seq, int):
                attributes["tollgate.seq"] = seq
            trace.get_current_span().add_event(f"{topic} publish", attributes)
            h.inject_trace(headers)
            await self.send_raw(topic, encode(event), key=key, partition=partition, headers=headers)
            return
        with tracer.start_as_current_span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            h.inject_trace(headers)
            await self.send_raw(topic, encode(event), key=key, partition=partition, headers=headers)

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: h.Headers | None = None,
    ) -> Any:
        """Send to ``topic`` (a name from :mod:`tollgate_core.topics`; the configured prefix
        is added here)."""
        producer = self._producer
        if producer is None:
            raise DependencyUnavailable("producer is not started")
        key_bytes = key.encode() if isinstance(key, str) else key
        if value is not None and len(value) > self._max_record_bytes:
            PRODUCE_ERRORS.labels(topic).inc()
            raise RecordTooLarge(
                f"a {len(value)}-byte record exceeds the {self._max_record_bytes}-byte limit"
                f" of {topic}"
            )
        try:
            metadata = await producer.send_and_wait(
                self._settings.topic(topic),
                value,
                key=key_bytes,
                partition=partition,
                headers=headers or [],
            )
        except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
            PRODUCE_ERRORS.labels(topic).inc()
            raise RecordTooLarge(f"the broker refused a record for {topic} as too large") from exc
        except KafkaError as exc:
            PRODUCE_ERRORS.labels(topic).inc()
            raise DependencyUnavailable(f"cannot produce to {topic}: {exc}") from exc
        PRODUCED.labels(topic).inc()
        return metadata

    async def ping(self, timeout_s: float = 5.0) -> None:
        """Ask the brokers for cluster metadata; :class:`DependencyUnavailable` when none
        answers within ``timeout_s`` (the connection to Kafka is lost)."""
        producer = self._producer
        if producer is None:
            raise DependencyUnavailable("producer is not started")
        try:
            async with asyncio.timeout(timeout_s):
                await producer.client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise DependencyUnavailable(f"Kafka unreachable: {exc or type(exc).__name__}") from exc

    async def partitions_for(self, topic: str) -> set[int]:
        producer = self._producer
        if producer is None:
            raise DependencyUnavailable("producer is not started")
        return set(await producer.partitions_for(self._settings.topic(topic)))
