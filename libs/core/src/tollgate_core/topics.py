"""Kafka topic names and their default shapes."""

from __future__ import annotations

from dataclasses import dataclass

REQUESTS = "tollgate.requests"
ADMITTED = "tollgate.admitted"
REPLIES = "tollgate.replies"
USAGE = "tollgate.usage"
LOGS = "tollgate.logs"
AUDIT = "tollgate.audit"
DEAD_LETTER = "tollgate.deadletter"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int


_HOUR = 3_600_000
_DAY = 24 * _HOUR

#: Every topic Tollgate uses, with the partition count it is created with.
DEFAULT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REQUESTS, 12, _DAY),
    TopicSpec(ADMITTED, 12, _DAY),
    TopicSpec(REPLIES, 12, _HOUR),
    TopicSpec(USAGE, 12, 7 * _DAY),
    TopicSpec(LOGS, 12, 7 * _DAY),
    TopicSpec(AUDIT, 3, 30 * _DAY),
    TopicSpec(DEAD_LETTER, 3, 14 * _DAY),
)
