"""Kafka header names and trace-context propagation through them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import propagate
from opentelemetry.context import Context

REQUEST_ID = "tollgate-request-id"
SCHEMA = "tollgate-schema"
PRINCIPAL = "tollgate-principal"
#: the AppSync channel an event is for, empty when it could name one and does not (an OpenAI
#: API reply): lets a consumer skip what it would not deliver
CHANNEL = "tollgate-channel"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

DLQ_REASON = "tollgate-dlq-reason"
DLQ_TOPIC = "tollgate-dlq-topic"
DLQ_PARTITION = "tollgate-dlq-partition"
DLQ_OFFSET = "tollgate-dlq-offset"
DLQ_GROUP = "tollgate-dlq-group"

Headers = list[tuple[str, bytes]]


def to_dict(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list as a dict of text values (later duplicates win; undecodable bytes replaced)."""
    return {k: v.decode("utf-8", "replace") for k, v in (headers or ()) if v is not None}


def inject_trace(headers: Headers) -> None:
    """Append W3C ``traceparent``/``tracestate`` of the current context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.extend((k, v.encode()) for k, v in carrier.items())


def extract_trace(headers: Mapping[str, str] | Sequence[tuple[str, bytes]]) -> Context:
    carrier = headers if isinstance(headers, Mapping) else to_dict(headers)
    return propagate.extract(carrier)


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]] | None,
    reason: str,
    source: tuple[str, int, int],
    group: str,
) -> Headers:
    """A dead letter's headers: the record's own, then why it was set aside (``reason``, cut
    to 1,000 characters), where it was read (``source`` = topic, partition, offset) and by
    which consumer group."""
    topic, partition, offset = source
    return [
        *(original or ()),
        (DLQ_REASON, reason[:1000].encode()),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_GROUP, group.encode()),
    ]
