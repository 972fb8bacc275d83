"""The worker end to end on a real Kafka: Parquet files in the right partitions, DuckDB totals
equal to the usage records, dead letters, restarts that lose and duplicate nothing, and data
endpoints that take the admin token and bound a query."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer

from tollgate_analytics.query import Catalog
from tollgate_core.bus import EventProducer
from tollgate_core.bus import headers as h
from tollgate_core.settings import KafkaSettings

ADMIN_TOKEN = "analytics-admin-test-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def count(catalog: Catalog, table: str) -> int:
    return int(catalog.query(f"SELECT count(*) FROM {table}").rows[0][0])  # noqa: S608


async def test_records_land_in_hour_partitions_and_totals_match_the_usage_records(
    worker_factory: Callable[..., Any],
    analytics_topics: Any,
    producer: EventProducer,
    make_request: Callable[..., Any],
    eventually: Callable[..., Any],
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> None:
    worker = worker_factory(admin_token=ADMIN_TOKEN, query_max_rows="100", query_timeout_s="3")
    worker.start()
    await worker.wait_ready()
    now = datetime.now(UTC)
    an_hour_ago = now - timedelta(hours=1)
    pairs = [make_request(i, finished_at=an_hour_ago if i < 5 else now) for i in range(30)]
    for log, usage in pairs:
        await producer.publish(analytics_topics.logs, log, key=log.principal)
        await producer.publish(analytics_topics.usage, usage, key=usage.principal)
    await producer.send_raw(
        analytics_topics.logs,
        b'{"not": "a log"}',
        key=b"mallory",
        headers=[(h.SCHEMA, b"tollgate.log.v1")],
    )

    catalog = Catalog(str(tmp_path / "dataset"))
    await eventually(lambda: count(catalog, "logs") == 30 and count(catalog, "usage") == 30)

    # DuckDB totals equal the sum of the usage records (what the meter settles from)
    want = (
        sum(u.usage.input_tokens for _, u in pairs),
        sum(u.usage.output_tokens for _, u in pairs),
        sum(u.cost_usd for _, u in pairs),
    )
    got = catalog.query("SELECT sum(input_tokens), sum(output_tokens), sum(cost_usd) FROM usage")
    assert got.rows[0] == want
    assert (
        catalog.query("SELECT sum(input_tokens), sum(output_tokens), sum(cost_usd) FROM logs").rows[
            0
        ]
        == want
    )
    # nothing twice
    assert catalog.query("SELECT count(DISTINCT request_id) FROM logs").rows[0][0] == 30

    # every file sits in the hour partition of its rows' event time
    files = sorted((tmp_path / "dataset").glob("*/year=*/month=*/day=*/hour=*/*.parquet"))
    assert files
    hours = set()
    for path in files:
        table = pq.read_table(path)
        column = "finished_at" if path.parts[-6] == "logs" else "occurred_at"
        for ts in table.column(column).to_pylist():
            part = f"year={ts.year:04d}/month={ts.month:02d}/day={ts.day:02d}/hour={ts.hour:02d}"
            assert part in str(path.parent), (path, ts)
            hours.add(ts.hour)
        _, _, first, last = path.name.removesuffix(".parquet").split("+")
        offsets = table.column("kafka_offset").to_pylist()
        assert int(first) <= min(offsets) and max(offsets) <= int(last)
    assert hours == {an_hour_ago.hour, now.hour}

    # the malformed record is dead-lettered and counted
    consumer = AIOKafkaConsumer(
        analytics_topics.dead_letter, auto_offset_reset="earliest", **kafka_settings.client_kwargs()
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b'{"not": "a log"}'
    assert h.to_dict(record.headers)[h.DLQ_TOPIC] == analytics_topics.logs
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{worker.url}/metrics")).text
        assert 'tollgate_analytics_dead_lettered_total{reason="ContractError"' in text.replace(
            f'topic="{analytics_topics.logs}",', ""
        )
        assert "tollgate_analytics_tokens_total" in text

        # the HTTP side: SQL, a canned report, the live aggregates, for the admin token only
        count_sql = {"sql": "SELECT count(*) AS n FROM usage"}
        for path, params in (
            ("/query", count_sql),
            ("/reports/usage-by-model", {}),
            ("/aggregates", {}),
        ):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_TOKEN}):
                refused = await client.get(f"{worker.url}{path}", params=params, headers=headers)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"]["type"] == "unauthorized"
                assert refused.headers["www-authenticate"] == "Bearer"
        rows = (await client.get(f"{worker.url}/query", params=count_sql, headers=ADMIN)).json()
        assert rows == [{"n": 30}]
        posted = await client.post(
            f"{worker.url}/query?format=csv", content="SELECT 1 AS one", headers=ADMIN
        )
        assert posted.text == "one\n1\n"
        by_model = (await client.get(f"{worker.url}/reports/usage-by-model", headers=ADMIN)).json()
        today = [p for p in pairs if p[0].finished_at.date() == now.date()]
        assert sum(r["requests"] for r in by_model) == len(today)
        live = (
            await client.get(
                f"{worker.url}/aggregates",
                params={"dimension": "model", "minutes": 120},
                headers=ADMIN,
            )
        ).json()
        assert sum(a["requests"] for a in live.values()) == 30
        assert sum(a["input_tokens"] for a in live.values()) == want[0]
        bad = await client.get(
            f"{worker.url}/query", params={"sql": "SELEC nonsense"}, headers=ADMIN
        )
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "validation_error"
        # the row cap (100) and the statement timeout (3 s)
        big = await client.get(
            f"{worker.url}/query", params={"sql": "SELECT * FROM range(101)"}, headers=ADMIN
        )
        assert big.status_code == 400 and big.json()["error"]["type"] == "result_too_large"
        fits = await client.get(
            f"{worker.url}/query", params={"sql": "SELECT * FROM range(100)"}, headers=ADMIN
        )
        assert len(fits.json()) == 100
        slow = await client.get(
            f"{worker.url}/query",
            params={"sql": "SELECT sum(a.range * b.range) FROM range(10000000000) a, range(9) b"},
            headers=ADMIN,
            timeout=30,
        )
        assert slow.status_code == 504 and slow.json()["error"]["type"] == "query_timeout"


async def test_a_worker_killed_mid_file_loses_and_duplicates_nothing(
    worker_factory: Callable[..., Any],
    analytics_topics: Any,
    producer: EventProducer,
    make_request: Callable[..., Any],
    eventually: Callable[..., Any],
    tmp_path: Path,
) -> None:
    first = worker_factory(roll_max_records="7", roll_max_age_s="1000", session_timeout_s="6")
    first.start()
    await first.wait_ready()
    async with httpx.AsyncClient() as client:
        # no admin token configured: the data endpoints are off
        for path in ("/query?sql=SELECT%201", "/reports/usage-by-model", "/aggregates"):
            disabled = await client.get(
                f"{first.url}{path}", headers={"authorization": "Bearer anything"}
            )
            assert disabled.status_code == 403, path
            assert disabled.json()["error"]["type"] == "admin_disabled"
            assert "TOLLGATE_ANALYTICS_ADMIN_TOKEN" in disabled.json()["error"]["message"]
    for i in range(40):
        log, _ = make_request(i)
        await producer.publish(analytics_topics.logs, log, key=log.principal)
    catalog = Catalog(str(tmp_path / "dataset"))
    # some segments are durable, others are open (7 records per file, 40 records)
    await eventually(lambda: count(catalog, "logs") >= 14)
    first.kill()
    assert count(catalog, "logs") < 40
    for i in range(40, 80):
        log, _ = make_request(i)
        await producer.publish(analytics_topics.logs, log, key=log.principal)

    second = worker_factory(
        admin_token=ADMIN_TOKEN,
        app_id=first.env["TOLLGATE_ANALYTICS_APP_ID"],
        roll_max_records="7",
        roll_max_age_s="1",
        session_timeout_s="6",
    )
    second.start()
    await second.wait_ready()
    await eventually(lambda: count(catalog, "logs") >= 80, timeout=90)
    rows = catalog.query(
        "SELECT count(*), count(DISTINCT request_id),"
        " count(DISTINCT (kafka_partition, kafka_offset)) FROM logs"
    ).rows[0]
    assert rows == (80, 80, 80)
    # the restart closed the replayed segments at the same offsets: no overlapping files
    ranges: dict[str, list[tuple[int, int]]] = {}
    for path in (tmp_path / "dataset" / "logs").rglob("*.parquet"):
        _, partition, first_offset, last_offset = path.name.removesuffix(".parquet").split("+")
        ranges.setdefault(partition, []).append((int(first_offset), int(last_offset)))
    for spans in ranges.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start, spans
    # the aggregates table was recovered from its changelog and counted each record once
    async with httpx.AsyncClient() as client:
        live = (
            await client.get(
                f"{second.url}/aggregates",
                params={"dimension": "principal", "minutes": 60},
                headers=ADMIN,
            )
        ).json()
    assert sum(a["requests"] for a in live.values()) == 80
