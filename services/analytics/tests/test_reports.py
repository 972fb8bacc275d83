"""SQL and canned reports over a dataset the sink wrote: the CLI's table, CSV and JSON, and
the Athena versions of the same reports."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tollgate_analytics import cli, dataset, reports
from tollgate_analytics.adapters.storage import LocalStore
from tollgate_analytics.query import Catalog, Limits, QueryError, QueryTimeout, ResultTooLarge
from tollgate_analytics.sink import ParquetSink, SinkSettings
from tollgate_core.health import Health

NOW = datetime.now(UTC)


@pytest.fixture
async def written(tmp_path: Path, make_request: Callable[..., Any]) -> tuple[Path, list[Any]]:
    root = tmp_path / "dataset"

    async def commit(topic: str, partition: int, offset: int) -> None:
        pass

    sink = ParquetSink(LocalStore(root), SinkSettings(max_records=8), Health(), commit)
    pairs = []
    for i in range(30):
        log, usage = make_request(i, finished_at=NOW - timedelta(days=1) if i >= 25 else NOW)
        # every third cost has more decimals than the columns hold: rounded when written
        cost = Decimal(i) / 7000 if i % 3 == 0 else log.cost_usd
        update = {"cost_usd": cost}
        pairs.append((log.model_copy(update=update), usage.model_copy(update=update)))
    for offset, (log, usage) in enumerate(pairs):
        await sink.add("tollgate.logs", 0, offset, dataset.log_row(log, 0, offset), size=1)
        await sink.add("tollgate.usage", 0, offset, dataset.usage_row(usage, 0, offset), size=1)
    await sink.flush_all()
    return root, pairs


def stored(cost: Decimal) -> Decimal:
    """A cost as the dataset keeps it: 8 decimal places, rounded half-even."""
    return cost.quantize(Decimal("0.00000001"), rounding=ROUND_HALF_EVEN)


def cost_of(records: Any) -> Decimal:
    return sum((stored(r.cost_usd) for r in records), Decimal(0))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.run(list(argv)) == 0
    return capsys.readouterr().out


async def test_report_today_shows_users_models_and_latency(
    written: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, pairs = written
    today = [log for log, _ in pairs if log.finished_at.date() == NOW.date()]
    out = run(capsys, "report", "today", "--data", str(root))
    assert "Tokens and cost by user and day" in out
    assert "Tokens and cost by model" in out
    assert "latency percentiles by model" in out
    for log in today:
        assert log.principal in out and log.model in out

    by_user = json.loads(
        run(capsys, "report", "usage-by-principal", "--data", str(root), "--format", "json")
    )
    for principal in {log.principal for log in today}:
        [row] = [r for r in by_user if r["principal"] == principal]
        mine = [log for log in today if log.principal == principal]
        assert row["requests"] == len(mine)
        assert row["input_tokens"] == sum(log.input_tokens for log in mine)
        assert row["output_tokens"] == sum(log.output_tokens for log in mine)
        assert Decimal(str(row["cost_usd"])) == cost_of(mine)
    assert sum(Decimal(str(r["cost_usd"])) for r in by_user) == cost_of(today) > 0

    by_model = (
        Catalog(str(root))
        .query(reports.REPORTS["usage-by-model"].sql, reports.window(None))
        .records()
    )
    assert {r["model"] for r in by_model} == {log.model for log in today}
    for row in by_model:
        mine = [log for log in today if log.model == row["model"]]
        assert row["cost_usd"] == cost_of(mine)  # exact: DuckDB's decimal sum
        assert row["total_tokens"] == sum(log.input_tokens + log.output_tokens for log in mine)

    latency = list(
        csv.DictReader(
            io.StringIO(
                run(capsys, "report", "latency-by-model", "--data", str(root), "--format", "csv")
            )
        )
    )
    assert {r["model"] for r in latency} == {log.model for log in today}
    for row in latency:
        assert float(row["latency_p50"]) <= float(row["latency_p95"]) <= float(row["latency_p99"])


async def test_every_canned_report_runs_and_two_days_include_yesterday(
    written: tuple[Path, list[Any]],
) -> None:
    root, pairs = written
    catalog = Catalog(str(root))
    for report in reports.REPORTS.values():
        catalog.query(report.sql, reports.window(None))
    two_days = catalog.query(reports.REPORTS["usage-by-day"].sql, reports.window(None, 2))
    assert sum(r["requests"] for r in two_days.records()) == len(pairs)
    assert sum(r["cost_usd"] for r in two_days.records()) == cost_of(log for log, _ in pairs)
    by_group = catalog.query(reports.REPORTS["usage-by-group"].sql, reports.window(None, 2))
    staff = [log for log, _ in pairs if "staff" in log.groups]
    staff_cost = sum(r["cost_usd"] for r in by_group.records() if r["group"] == "staff")
    assert staff_cost == cost_of(staff) > 0
    usage_total = catalog.query("SELECT sum(cost_usd) FROM usage").rows[0][0]
    assert usage_total == cost_of(usage for _, usage in pairs)
    errors = catalog.query(reports.REPORTS["error-rates"].sql, reports.window(None, 2)).records()
    assert sum(r["errors"] for r in errors) == sum(1 for log, _ in pairs if log.status != "ok")
    cache = catalog.query(reports.REPORTS["cache-savings"].sql, reports.window(None, 2)).records()
    assert sum(r["cache_hits"] for r in cache) == sum(1 for log, _ in pairs if log.cache_hit)


async def test_query_command_and_errors(
    written: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, pairs = written
    out = run(capsys, "query", "SELECT count(*) AS n FROM usage WHERE day > 0", "--data", str(root))
    assert out.split("\n")[2].strip() == str(len(pairs))
    assert cli.run(["query", "SELECT nope FROM usage", "--data", str(root)]) == 2
    assert "error: query failed" in capsys.readouterr().err
    with pytest.raises(QueryError):
        Catalog(str(root)).query("DROP TABLE logs")


def test_a_query_past_its_timeout_is_interrupted(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "nothing"))
    started = time.monotonic()
    with pytest.raises(QueryTimeout) as timed_out:
        catalog.query(
            "SELECT sum(a.range * b.range) FROM range(10000000000) a, range(9) b",
            limits=Limits(timeout_s=0.5),
        )
    assert time.monotonic() - started < 10
    assert timed_out.value.http_status == 504
    # a quick one is not disturbed by its timer, before or after it would fire
    assert catalog.query("SELECT 1", limits=Limits(timeout_s=0.5)).rows == [(1,)]
    time.sleep(0.6)
    assert catalog.query("SELECT 2", limits=Limits(timeout_s=0.5)).rows == [(2,)]


def test_a_result_past_the_row_cap_is_refused_not_cut(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "nothing"))
    capped = Limits(max_rows=100)
    assert len(catalog.query("SELECT * FROM range(100)", limits=capped).rows) == 100
    with pytest.raises(ResultTooLarge) as refused:
        catalog.query("SELECT * FROM range(1000000000)", limits=capped)
    assert refused.value.error_type == "result_too_large"
    assert refused.value.details == {"max_rows": 100}
    assert len(catalog.query("SELECT * FROM range(1000)").rows) == 1000  # the CLI: no cap


def test_an_empty_dataset_answers_with_no_rows(tmp_path: Path) -> None:
    result = Catalog(str(tmp_path / "nothing")).query("SELECT count(*) FROM logs")
    assert result.rows == [(0,)]


def hive_type(arrow: pa.DataType) -> str:
    """The Glue/Athena type a Parquet column of ``arrow`` is read as."""
    if pa.types.is_decimal(arrow):
        return f"decimal({arrow.precision},{arrow.scale})"
    if pa.types.is_list(arrow):
        return f"array<{hive_type(arrow.value_type)}>"
    if pa.types.is_timestamp(arrow):
        return "timestamp"
    return {
        pa.string(): "string",
        pa.int64(): "bigint",
        pa.int32(): "int",
        pa.bool_(): "boolean",
    }[arrow]


def column_list(text: str) -> list[tuple[str, str]]:
    """``name type, ...`` as pairs; commas inside parentheses (``decimal(18,8)``) stay."""
    columns = []
    for item in re.split(r",(?![^()]*\))", text):
        name, kind = item.split()
        columns.append((name, kind))
    return columns


def athena_tables() -> dict[str, dict[str, Any]]:
    """The tables ``aws/tables.sql`` creates: columns, partition columns, properties."""
    ddl = (resources.files("tollgate_analytics") / "aws" / "tables.sql").read_text()
    tables: dict[str, dict[str, Any]] = {}
    for match in re.finditer(
        r"CREATE EXTERNAL TABLE IF NOT EXISTS tollgate\.(\w+) \((.*?)\)\s*"
        r"PARTITIONED BY \((.*?)\)\s*STORED AS PARQUET\s*LOCATION '([^']*)'\s*"
        r"TBLPROPERTIES \((.*?)\);",
        ddl,
        re.S,
    ):
        name, columns, partitions, location, properties = match.groups()

        tables[name] = {
            "columns": column_list(columns),
            "partitions": column_list(partitions),
            "location": location,
            "properties": dict(re.findall(r"'([^']+)'\s*=\s*'([^']*)'", properties)),
        }
    return tables


def test_the_athena_tables_match_the_parquet_schemas() -> None:
    tables = athena_tables()
    assert sorted(tables) == sorted(t.name for t in dataset.TABLES)
    hour = datetime(2026, 3, 4, 5, tzinfo=UTC)
    for table in dataset.TABLES:
        athena = tables[table.name]
        assert athena["columns"] == [(f.name, hive_type(f.type)) for f in table.schema]
        assert athena["partitions"] == [(c, "int") for c in dataset.PARTITION_COLUMNS]
        root = f"s3://YOUR-BUCKET/analytics/{table.name}/"
        assert athena["location"] == root
        props = athena["properties"]
        assert props["projection.enabled"] == "true"
        assert props["parquet.compression"] == "ZSTD"
        # the projected paths are the ones the sink writes (zero-padded, in this order)
        template = props["storage.location.template"]
        for column in dataset.PARTITION_COLUMNS:
            assert props[f"projection.{column}.type"] == "integer"
            digits = int(props.get(f"projection.{column}.digits", "1"))
            template = template.replace("${" + column + "}", f"{getattr(hour, column):0{digits}d}")
        assert template == f"s3://YOUR-BUCKET/analytics/{dataset.partition_path(table, hour)}/"


def test_each_report_has_an_athena_version() -> None:
    folder = resources.files("tollgate_analytics") / "aws" / "reports"
    for name in reports.REPORTS:
        sql = (folder / f"{name}.sql").read_text()
        assert "FROM tollgate.logs" in sql
        assert "year = ? AND month = ? AND day = ?" in sql


def test_sql_cannot_reach_files_or_change_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    catalog = Catalog(str(tmp_path / "dataset"))
    for sql in (
        f"SELECT * FROM read_csv('{secret}')",  # noqa: S608
        f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
        "SET enable_external_access = true",
    ):
        with pytest.raises(QueryError):
            catalog.query(sql)
    assert not (tmp_path / "out.csv").exists()


async def test_a_record_published_twice_is_one_row_of_its_table(
    tmp_path: Path, make_request: Callable[..., Any]
) -> None:
    """A producer that died after publishing, or whose acknowledgement was lost, publishes a
    request's records again at later offsets: the tables hold the request once, at its first
    offset; ``<table>_records`` keeps every record as stored."""
    root = tmp_path / "dataset"

    async def commit(topic: str, partition: int, offset: int) -> None:
        pass

    sink = ParquetSink(LocalStore(root), SinkSettings(max_records=8), Health(), commit)
    first, again = make_request(0), make_request(1)
    for offset, (log, usage) in enumerate([first, again, first]):
        await sink.add("tollgate.logs", 3, offset, dataset.log_row(log, 3, offset), size=1)
        await sink.add("tollgate.usage", 3, offset, dataset.usage_row(usage, 3, offset), size=1)
    await sink.flush_all()
    catalog = Catalog(str(root))
    for table in ("logs", "usage"):
        rows = catalog.query(f"SELECT request_id, kafka_offset FROM {table} ORDER BY 2").rows  # noqa: S608
        assert rows == [(first[0].request_id, 0), (again[0].request_id, 1)]
        stored = catalog.query(f"SELECT count(*) FROM {table}_records").rows  # noqa: S608
        assert stored == [(3,)]
    [(tokens,)] = catalog.query("SELECT sum(output_tokens) FROM usage").rows
    assert tokens == first[1].usage.output_tokens + again[1].usage.output_tokens
