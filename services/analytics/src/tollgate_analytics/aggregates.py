"""Per-minute aggregates of request logs, per model and per principal (pure logic).

A table key is ``<minute>|<dimension>|<value>|<source partition>``: each key is updated from
one source partition only, in offset order, so the value can carry the last offset it applied
and a redelivered record is never counted twice. Reading merges the partitions' values (the
latency sketches are mergeable), so no repartition topic is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tollgate_analytics import dataset
from tollgate_analytics.sketch import Sketch
from tollgate_core.contracts import RequestLogV1

DIMENSIONS = ("model", "principal")
_SEP = "|"


def minute_of(ts: datetime) -> int:
    """Epoch seconds of the start of ``ts``'s minute."""
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return int(ts.timestamp()) // 60 * 60


def table_key(minute: int, dimension: str, value: str, partition: int) -> str:
    return _SEP.join((str(minute), dimension, value.replace(_SEP, "/"), str(partition)))


def parse_key(key: str) -> tuple[int, str, str, int]:
    minute, dimension, value, partition = key.split(_SEP)
    return int(minute), dimension, value, int(partition)


@dataclass
class Aggregate:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    errors: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    ttft_ms: Sketch = field(default_factory=Sketch)
    latency_ms: Sketch = field(default_factory=Sketch)
    last_offset: int = -1

    def apply(self, record: RequestLogV1, offset: int) -> bool:
        """Count ``record`` unless its offset was already applied; True when counted."""
        if offset <= self.last_offset:
            return False
        self.last_offset = offset
        self.requests += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cost_usd += dataset.usd(record.cost_usd)  # rounded as in the dataset
        if record.status != "ok":
            kind = record.error_type or record.status
            self.errors[kind] = self.errors.get(kind, 0) + 1
        if record.cache_hit:
            self.cache_hits += 1
        if record.time_to_first_token_ms is not None:
            self.ttft_ms.add(record.time_to_first_token_ms)
        self.latency_ms.add(record.latency_ms)
        return True

    def merge(self, other: Aggregate) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.cache_hits += other.cache_hits
        self.ttft_ms.merge(other.ttft_ms)
        self.latency_ms.merge(other.latency_ms)

    def _counts(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": str(self.cost_usd),
            "errors": dict(self.errors),
            "cache_hits": self.cache_hits,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._counts(),
            "ttft_ms": self.ttft_ms.to_dict(),
            "latency_ms": self.latency_ms.to_dict(),
            "last_offset": self.last_offset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aggregate:
        return cls(
            requests=int(data["requests"]),
            input_tokens=int(data["input_tokens"]),
            output_tokens=int(data["output_tokens"]),
            cost_usd=Decimal(str(data["cost_usd"])),
            errors={str(k): int(v) for k, v in dict(data["errors"]).items()},
            cache_hits=int(data["cache_hits"]),
            ttft_ms=Sketch.from_dict(data["ttft_ms"]),
            latency_ms=Sketch.from_dict(data["latency_ms"]),
            last_offset=int(data.get("last_offset", -1)),
        )

    def summary(self) -> dict[str, Any]:
        """The aggregate as a report row (percentiles read from the sketches)."""

        def q(sketch: Sketch, p: float) -> float | None:
            value = sketch.quantile(p)
            return None if value is None else round(value, 1)

        return {
            **self._counts(),
            "ttft_ms_p50": q(self.ttft_ms, 0.5),
            "ttft_ms_p95": q(self.ttft_ms, 0.95),
            "ttft_ms_p99": q(self.ttft_ms, 0.99),
            "latency_ms_p50": q(self.latency_ms, 0.5),
            "latency_ms_p95": q(self.latency_ms, 0.95),
            "latency_ms_p99": q(self.latency_ms, 0.99),
        }


def rollup(
    items: list[tuple[str, dict[str, Any]]], dimension: str, since_minute: int
) -> dict[str, Aggregate]:
    """Merge table entries of ``dimension`` from ``since_minute`` on, by dimension value."""
    merged: dict[str, Aggregate] = {}
    for key, value in items:
        minute, dim, name, _ = parse_key(key)
        if dim != dimension or minute < since_minute:
            continue
        merged.setdefault(name, Aggregate()).merge(Aggregate.from_dict(value))
    return merged
