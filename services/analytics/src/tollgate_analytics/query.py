"""SQL over the Parquet dataset with DuckDB: views ``logs`` and ``usage`` (plus the Hive
columns ``year, month, day, hour``) over a local directory or an S3 bucket, read through
pyarrow datasets (no DuckDB extension to download). :class:`Limits` bound a query taken
from a caller: a statement timeout (the connection is interrupted from a timer thread) and
a cap on the rows of its result."""

from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from tollgate_analytics import dataset
from tollgate_analytics.errors import QueryError, QueryTimeout, ResultTooLarge

__all__ = ["Catalog", "Limits", "QueryError", "QueryTimeout", "Result", "ResultTooLarge"]

_HIVE = pa.schema([(c, pa.int32()) for c in dataset.PARTITION_COLUMNS])


@dataclass(frozen=True, slots=True)
class Limits:
    """``timeout_s``: interrupt a query still running after this long; ``max_rows``: refuse
    a result with more rows (rather than cut it short). None: no limit."""

    timeout_s: float | None = None
    max_rows: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _filesystem(location: str, s3_options: dict[str, Any]) -> tuple[pafs.FileSystem, str]:
    if location.startswith("s3://"):
        fs = pafs.S3FileSystem(**s3_options)
        return fs, location.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), location.rstrip("/")


def _one_row_per_request(name: str) -> str:
    # a request's records share its key (the principal), so they are on one partition
    return (
        f"CREATE VIEW {name} AS SELECT * FROM {name}_records"  # noqa: S608 - our own names
        " QUALIFY row_number() OVER"
        " (PARTITION BY request_id ORDER BY kafka_partition, kafka_offset) = 1"
    )


class Catalog:
    """Opens DuckDB connections with the dataset's tables registered as views.

    The dataset holds every record of the source topics, and delivery is at least once: a
    router or meter that dies after publishing a request's log or usage record, but before it
    noted that, publishes the same record again (at another offset), and so does a producer
    whose acknowledgement was lost. Each table is therefore a view with one row per request
    (the record at the lowest offset); ``<table>_records`` has every record as stored.
    """

    def __init__(self, location: str, s3_options: dict[str, Any] | None = None) -> None:
        self._location = location
        self._s3_options = s3_options or {}

    def _table(self, table: dataset.Table) -> ds.Dataset | pa.Table:
        fs, root = _filesystem(self._location, self._s3_options)
        path = f"{root}/{table.name}"
        schema = pa.schema([*table.schema, *_HIVE])
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.Directory:
            return schema.empty_table()
        return ds.dataset(
            path,
            format="parquet",
            filesystem=fs,
            schema=schema,
            partitioning=ds.partitioning(_HIVE, flavor="hive"),
        )

    def connect(self) -> duckdb.DuckDBPyConnection:
        # SQL reaches no file, URL or extension: only the registered tables (the HTTP
        # endpoint takes SQL from callers), and a query cannot lift that.
        con = duckdb.connect(
            config={
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
        for table in dataset.TABLES:
            con.register(f"{table.name}_records", self._table(table))
            con.execute(_one_row_per_request(table.name))
        con.execute("SET lock_configuration = true")
        return con

    def query(
        self, sql: str, params: dict[str, Any] | None = None, limits: Limits = NO_LIMITS
    ) -> Result:
        """Run ``sql`` (blocking: call it in a thread from async code)."""
        con = self.connect()
        closing = threading.Lock()
        closed = False

        def interrupt() -> None:
            with closing:
                if not closed:
                    con.interrupt()

        timer = threading.Timer(limits.timeout_s, interrupt) if limits.timeout_s else None
        try:
            if timer is not None:
                timer.start()
            cursor = con.execute(sql, params or {})
            columns = [d[0] for d in cursor.description or []]
            if limits.max_rows is None:
                return Result(columns, cursor.fetchall())
            rows = cursor.fetchmany(limits.max_rows + 1)
            if len(rows) > limits.max_rows:
                raise ResultTooLarge(
                    f"the result has more than {limits.max_rows} rows:"
                    " aggregate, filter or add a LIMIT",
                    details={"max_rows": limits.max_rows},
                )
            return Result(columns, rows)
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the query ran longer than {limits.timeout_s}s and was stopped",
                details={"timeout_s": limits.timeout_s},
            ) from exc
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}") from exc
        finally:
            if timer is not None:
                timer.cancel()
            with closing:
                closed = True
                con.close()


# --- output -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral() else int(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 4)
    return value


def render(result: Result, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(
            [{k: _plain(v) for k, v in r.items()} for r in result.records()], indent=2
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([[_plain(v) for v in row] for row in result.rows])
        return out.getvalue()
    if fmt == "table":
        cells = [[("" if v is None else str(_plain(v))) for v in row] for row in result.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(result.columns)]
        line = "  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True))
        rule = "  ".join("-" * w for w in widths)
        body = [
            "  ".join(
                v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=True)
            )
            for r in cells
        ]
        return "\n".join([line, rule, *body, f"({len(cells)} row{'s' if len(cells) != 1 else ''})"])
    raise ValueError(f"unknown format {fmt!r}: use table, csv or json")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
