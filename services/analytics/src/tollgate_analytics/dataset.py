"""The Parquet dataset's layout: tables, their Arrow schemas, rows, and object names.

::

    <root>/logs/year=2026/month=11/day=22/hour=13/tollgate.logs+3+00000000000000000100+00000000000000000199.parquet
    <root>/usage/year=.../hour=../tollgate.usage+0+<first offset>+<last offset>.parquet
    <root>/_segments/tollgate.logs/3/<first offset>-<last offset>.json

A *segment* is a contiguous offset range of one topic partition; it is written as one file
per hour partition its records fall in, all named after the same offset range. Before any of
its files is written, its marker under ``_segments/`` records the range, so a restart that
re-reads those offsets closes the segment at the same offset and rewrites the same names
(see ``docs/analytics.md``). Underscore-prefixed paths are ignored by Hive, Athena and the
DuckDB views.

A row is checked against its table's Arrow schema when the sink takes it (:func:`conform`),
not when its segment is written: a value the column cannot hold would otherwise fail the
whole file. Decimals are rounded half-even to the column's scale (a cost with nine decimals
is a representational limit, not an error); a value out of its column's range (an int32
overflow, a cost of 10^10 USD) makes the record :class:`RowNotRepresentable`, and the
caller dead-letters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pyarrow as pa

from tollgate_analytics.errors import RowNotRepresentable
from tollgate_core.contracts import RequestLogV1, UsageRecordV1

MARKERS = "_segments"
_OFFSET_WIDTH = 20
#: the type of every ``cost_usd`` column (and of the meter's ledger, ``Numeric(18, 8)``)
COST = pa.decimal128(18, 8)

LOGS_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("principal", pa.string()),
        ("groups", pa.list_(pa.string())),
        ("model", pa.string()),
        ("provider", pa.string()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cost_usd", COST),
        ("cache_hit", pa.bool_()),
        ("retries", pa.int32()),
        ("fallback_used", pa.bool_()),
        ("time_to_first_token_ms", pa.int64()),
        ("latency_ms", pa.int64()),
        ("conversation_id", pa.string()),
        ("protocol", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)

USAGE_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("principal", pa.string()),
        ("model", pa.string()),
        ("provider", pa.string()),
        ("status", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cost_usd", COST),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)

#: the Hive partition columns every table has, in path order
PARTITION_COLUMNS = ("year", "month", "day", "hour")


Fit = Callable[[Any], Any]


def _decimal_fit(column: str, type_: pa.Decimal128Type) -> Fit:
    quantum = Decimal(1).scaleb(-type_.scale)
    limit = Decimal(10) ** (type_.precision - type_.scale)

    def fit(value: Any) -> Any:
        if value is None:
            return None
        number = value if isinstance(value, Decimal) else Decimal(value)
        if number.is_finite() and abs(number) < limit:
            rounded = number.quantize(quantum, rounding=ROUND_HALF_EVEN)
            if abs(rounded) < limit:
                return rounded
        raise RowNotRepresentable(f"{column} = {value} does not fit {type_}")

    return fit


def _integer_fit(column: str, type_: pa.DataType) -> Fit:
    bits = type_.bit_width
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        if pa.types.is_signed_integer(type_)
        else (0, (1 << bits) - 1)
    )

    def fit(value: Any) -> Any:
        if value is not None and not low <= value <= high:
            raise RowNotRepresentable(f"{column} = {value} is outside the range of {type_}")
        return value

    return fit


def _fits(schema: pa.Schema) -> dict[str, Fit]:
    """The columns whose values can fall outside their Arrow type, with their check. The
    other types (strings, booleans, lists of strings, timestamps in microseconds) hold every
    value the contracts admit."""
    fits: dict[str, Fit] = {}
    for column in schema:
        if pa.types.is_decimal(column.type):
            fits[column.name] = _decimal_fit(column.name, column.type)
        elif pa.types.is_integer(column.type):
            fits[column.name] = _integer_fit(column.name, column.type)
    return fits


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    schema: pa.Schema
    fits: dict[str, Fit] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fits", _fits(self.schema))


LOGS = Table("logs", LOGS_SCHEMA)
USAGE = Table("usage", USAGE_SCHEMA)
TABLES = (LOGS, USAGE)


@dataclass(frozen=True, slots=True)
class Row:
    """One record bound for the dataset: its table, hour partition and column values."""

    table: Table
    hour: datetime
    values: dict[str, Any]


def usd(value: Decimal) -> Decimal:
    """``value`` rounded half-even to the cost columns' 8 decimal places."""
    fit: Decimal = LOGS.fits["cost_usd"](value)
    return fit


def conform(row: Row) -> Row:
    """``row`` with every value its column can hold: decimals rounded half-even to their
    scale. Raises RowNotRepresentable for a value out of its column's range."""
    values = dict(row.values)
    for column, fit in row.table.fits.items():
        values[column] = fit(values.get(column))
    return Row(row.table, row.hour, values)


def _hour(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


def log_row(record: RequestLogV1, partition: int, offset: int) -> Row:
    values = record.model_dump(exclude={"kind"})
    values["groups"] = list(record.groups)
    values["kafka_partition"] = partition
    values["kafka_offset"] = offset
    return Row(LOGS, _hour(record.finished_at), values)


def usage_row(record: UsageRecordV1, partition: int, offset: int) -> Row:
    values: dict[str, Any] = {
        "request_id": record.request_id,
        "principal": record.principal,
        "model": record.model,
        "provider": record.provider,
        "status": record.status,
        "input_tokens": record.usage.input_tokens,
        "output_tokens": record.usage.output_tokens,
        "cost_usd": record.cost_usd,
        "occurred_at": record.occurred_at,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }
    return Row(USAGE, _hour(record.occurred_at), values)


def partition_path(table: Table, hour: datetime) -> str:
    return (
        f"{table.name}/year={hour.year:04d}/month={hour.month:02d}/"
        f"day={hour.day:02d}/hour={hour.hour:02d}"
    )


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}+{partition}+{first:0{_OFFSET_WIDTH}d}+{last:0{_OFFSET_WIDTH}d}.parquet"


def marker_prefix(topic: str, partition: int) -> str:
    return f"{MARKERS}/{topic}/{partition}/"


def marker_key(topic: str, partition: int, first: int, last: int) -> str:
    return (
        f"{marker_prefix(topic, partition)}{first:0{_OFFSET_WIDTH}d}-{last:0{_OFFSET_WIDTH}d}.json"
    )


def parse_marker(key: str) -> tuple[int, int]:
    """The offset range a marker key names."""
    first, last = key.rsplit("/", 1)[-1].removesuffix(".json").split("-")
    return int(first), int(last)


def to_parquet(table: Table, rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pylist(rows, schema=table.schema)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())
