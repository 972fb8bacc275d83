"""The small interfaces services depend on, so business logic never imports aiokafka."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from tollgate_core.contracts import Contract

T = TypeVar("T")


class Publisher(Protocol):
    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        """Publish ``event`` and return once the broker has acknowledged it."""


@dataclass(frozen=True, slots=True)
class Delivered(Generic[T]):
    """A decoded event with where it came from."""

    event: T
    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    topic: str
    event: Contract
    key: str | None
    partition: int | None


class InMemoryPublisher:
    """A :class:`Publisher` that records what it was given, for tests of business logic."""

    def __init__(self) -> None:
        self.events: list[PublishedEvent] = []

    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        self.events.append(PublishedEvent(topic, event, key, partition))

    def on(self, topic: str) -> list[Contract]:
        return [p.event for p in self.events if p.topic == topic]
