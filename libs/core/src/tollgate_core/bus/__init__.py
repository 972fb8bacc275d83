"""Kafka bus: typed producer and consumer over aiokafka, with trace context and dead letters."""

from tollgate_core.bus.codec import Decoder, encode
from tollgate_core.bus.consumer import EventConsumer, Handler
from tollgate_core.bus.interfaces import Delivered, InMemoryPublisher, PublishedEvent, Publisher
from tollgate_core.bus.producer import EventProducer

__all__ = [
    "Decoder",
    "Delivered",
    "EventConsumer",
    "EventProducer",
    "Handler",
    "InMemoryPublisher",
    "PublishedEvent",
    "Publisher",
    "encode",
]
