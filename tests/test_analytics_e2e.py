"""Conversations through the whole gateway end up in the Parquet dataset, and DuckDB's
totals equal the meter's ledger for the same requests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.appsync_client import chat_event, connect, dev_token
from tollgate_analytics import reports
from tollgate_analytics.query import Catalog
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def converse(stack: Stack, user: str, prompt: str) -> str:
    edge = stack.url("stream")
    token = await dev_token(stack.url("auth"), user)
    async with connect(edge, {"Authorization": token}) as socket:
        await socket.subscribe("s", f"/Outbound-Messages/{user}")
        async with httpx.AsyncClient(headers={"Authorization": token}) as client:
            response = await client.post(
                f"{edge}/event",
                json={"channel": f"/Inbound-Messages/{user}", "events": [chat_event(prompt)]},
            )
        request_id: str = response.json()["successful"][0]["identifier"]
        async with asyncio.timeout(30):
            async for event in socket.events("s"):
                if "metadata" in event or "error" in event:
                    return request_id
    raise AssertionError("unreachable")


async def test_conversations_land_in_parquet_and_match_the_meter_ledger(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    ids = [
        await converse(stack, user, prompt)
        for user, prompt in (
            ("erin", "What is a token?"),
            ("frank", "Tell me about Kafka partitions, please"),
            ("erin", "And about Parquet?"),
        )
    ]
    catalog = Catalog(stack.env["TOLLGATE_ANALYTICS_DATA_DIR"])
    quoted = ", ".join(f"'{i}'" for i in ids)

    async with asyncio.timeout(60):
        while True:
            found = catalog.query(
                f"SELECT (SELECT count(*) FROM logs WHERE request_id IN ({quoted})),"  # noqa: S608
                f" (SELECT count(*) FROM usage WHERE request_id IN ({quoted}))"
            ).rows[0]
            if found == (3, 3):
                break
            await asyncio.sleep(0.5)

    engine = create_async_engine(DatabaseSettings(database_url=embedded_postgres.url).async_url)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(15):
            while True:
                async with engine.connect() as conn:
                    ledger = (
                        await conn.execute(
                            text(
                                "SELECT count(*) FILTER (WHERE status = 'settled'),"
                                " sum(input_tokens), sum(output_tokens)"
                                " FROM meter.reservations WHERE request_id = ANY(:ids)"
                            ),
                            {"ids": ids},
                        )
                    ).one()
                if ledger[0] == 3:
                    break
                await asyncio.sleep(0.2)
    finally:
        await engine.dispose()

    for table in ("usage", "logs"):
        totals = catalog.query(
            f"SELECT sum(input_tokens), sum(output_tokens) FROM {table}"  # noqa: S608
            f" WHERE request_id IN ({quoted})"
        ).rows[0]
        assert totals == (ledger[1], ledger[2]), table

    # the files sit in today's hour partitions, and the day's report names both users
    paths = catalog.query(
        f"SELECT DISTINCT year, month, day, hour, finished_at FROM logs"  # noqa: S608
        f" WHERE request_id IN ({quoted})"
    ).rows
    for year, month, day, hour, finished_at in paths:
        assert (year, month, day, hour) == (
            finished_at.year,
            finished_at.month,
            finished_at.day,
            finished_at.hour,
        )
    by_user: list[dict[str, Any]] = catalog.query(
        reports.REPORTS["usage-by-principal"].sql, reports.window(None)
    ).records()
    assert {"erin", "frank"} <= {r["principal"] for r in by_user}
