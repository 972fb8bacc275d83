"""Admission decisions per second of one meter's ledger against a local Postgres, and the
latency of each decision (principal row lock, window sums, reservation, counter updates).

Starts an embedded Postgres, migrates it, then runs ``--decisions`` admissions spread over
``--principals`` principals with ``--concurrency`` in flight (as the meter's admission
consumer does), followed by as many settlements.

    .venv/bin/python bench/meter_admission.py --decisions 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from tollgate_core import db
from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_meter.adapters.ledger import PostgresLedger
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import TierConfig
from tollgate_meter.main import MIGRATIONS


async def run(url: str, decisions: int, principals: int, concurrency: int) -> dict[str, object]:
    settings = DatabaseSettings(database_url=SecretStr(url), database_pool_size=concurrency)
    await db.migrate(settings, MIGRATIONS)
    engine = db.create_engine(settings, application_name="bench")
    ledger = PostgresLedger(engine, TierConfig(), bucket_seconds=600)
    latencies: list[float] = []
    admitted = 0
    slots = asyncio.Semaphore(concurrency)

    async def admit(i: int) -> None:
        nonlocal admitted
        async with slots:
            t0 = time.perf_counter()
            decision = await ledger.admit(
                f"r{i}", f"p{i % principals}", "m", (), Estimate(20, 50), datetime.now(UTC)
            )
            latencies.append(time.perf_counter() - t0)
            admitted += decision.admitted

    async def settle(i: int) -> None:
        async with slots:
            await ledger.settle(
                UsageRecordV1(
                    request_id=f"r{i}",
                    principal=f"p{i % principals}",
                    model="m",
                    provider="x",
                    usage=Usage(input_tokens=15, output_tokens=40),
                    cost_usd=Decimal("0.001"),
                ),
                datetime.now(UTC),
            )

    try:
        await asyncio.gather(*(admit(-i - 1) for i in range(200)))  # warm the pool
        latencies.clear()
        admitted = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(admit(i) for i in range(decisions)))
        admit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await asyncio.gather(*(settle(i) for i in range(decisions)))
        settle_s = time.perf_counter() - t0
    finally:
        await engine.dispose()
    q = statistics.quantiles(latencies, n=100)
    return {
        "decisions": decisions,
        "principals": principals,
        "concurrency": concurrency,
        "admitted": admitted,
        "decisions_per_s": round(decisions / admit_s),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 2),
            "p99": round(1000 * q[98], 2),
        },
        "settlements_per_s": round(decisions / settle_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--principals", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", help="a Postgres to use instead of an embedded one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            url = args.database_url
            result = asyncio.run(run(url, args.decisions, args.principals, args.concurrency))
        else:
            with EmbeddedPostgres(Path(tmp) / "pg") as pg:
                result = asyncio.run(run(pg.url, args.decisions, args.principals, args.concurrency))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
