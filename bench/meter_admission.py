"""Admission decisions per second of one meter's ledger against a local Postgres, and the
latency of each decision (principal row lock, window sums, reservation, counter updates).

Starts an embedded Postgres, migrates it, then runs ``--decisions`` admissions spread over
``--principals`` principals, followed by as many settlements. The engine is the meter's own
(``create_engine``: its pool settings, no ping per checkout) and its pool has the meter's
size unless ``--pool-size`` says otherwise.

Two ways to load it:

- closed loop (default): ``--concurrency`` admissions in flight, each started when one ends,
  as the meter's admission consumer does when its backlog is long. Latency is measured from
  the start of each admission, so it is the service time at that concurrency.
- open loop (``--rate N``): admissions are offered at N a second on a fixed schedule whatever
  the meter does, at most ``--concurrency`` in flight (the consumer's bound) and the rest
  queued. Latency is measured from each admission's *scheduled* time, so time spent queued
  behind slow ones counts (no coordinated omission).

    .venv/bin/python bench/meter_admission.py --decisions 4000
    .venv/bin/python bench/meter_admission.py --decisions 4000 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import TierConfig
from tollgate_meter.main import MIGRATIONS
from tollgate_meter.settings import MeterSettings

WARM_UP = 200


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summary(latencies: list[float]) -> dict[str, float]:
    values = sorted(latencies)
    return {
        "p50": round(1000 * statistics.median(values), 2),
        "p90": round(1000 * percentile(values, 0.90), 2),
        "p99": round(1000 * percentile(values, 0.99), 2),
        "p999": round(1000 * percentile(values, 0.999), 2),
        "max": round(1000 * values[-1], 2),
    }


async def run(
    url: str,
    *,
    decisions: int,
    principals: int,
    concurrency: int,
    pool_size: int,
    rate: float | None,
) -> dict[str, object]:
    settings = DatabaseSettings(database_url=SecretStr(url), database_pool_size=pool_size)
    await db.migrate(settings, MIGRATIONS)
    engine = create_engine(settings, application_name="bench")
    ledger = PostgresLedger(engine, TierConfig(), bucket_seconds=600)
    latencies: list[float] = []
    admitted = 0
    slots = asyncio.Semaphore(concurrency)

    async def admit(i: int, since: float | None = None) -> None:
        """One admission; its latency counts from ``since`` (the scheduled time) if given,
        else from when it got a slot."""
        nonlocal admitted
        async with slots:
            t0 = time.perf_counter() if since is None else since
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

    async def open_loop(rate: float) -> float:
        """Offers admissions on schedule; returns how far behind schedule the sender fell at
        worst (a sender that cannot keep up means the client, not the meter, is the limit)."""
        start, behind = time.perf_counter(), 0.0
        tasks = []
        for i in range(decisions):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                behind = max(behind, -wait)
            tasks.append(asyncio.create_task(admit(i, due)))
        await asyncio.gather(*tasks)
        return behind

    try:
        await asyncio.gather(*(admit(-i - 1) for i in range(WARM_UP)))  # fill the pool
        latencies.clear()
        admitted = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        behind = None
        if rate is None:
            await asyncio.gather(*(admit(i) for i in range(decisions)))
        else:
            behind = await open_loop(rate)
        admit_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        t0 = time.perf_counter()
        await asyncio.gather(*(settle(i) for i in range(decisions)))
        settle_s = time.perf_counter() - t0
    finally:
        await engine.dispose()
    result: dict[str, object] = {
        "mode": "closed loop" if rate is None else "open loop",
        "decisions": decisions,
        "principals": principals,
        "concurrency": concurrency,
        "pool_size": pool_size,
        "admitted": admitted,
        "decisions_per_s": round(decisions / admit_s),
        "latency_ms": summary(latencies),
        "client_cpu_ms_per_decision": round(1000 * cpu_s / decisions, 3),
        "settlements_per_s": round(decisions / settle_s),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if rate is not None:
        result["offered_per_s"] = rate
        result["sender_max_behind_ms"] = round(1000 * (behind or 0.0), 2)
    return result


def main() -> None:
    meter = MeterSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=4000)
    parser.add_argument("--principals", type=int, default=200)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=meter.admission_concurrency,
        help="admissions in flight at most (default: the meter's, %(default)s)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=meter.database.database_pool_size,
        help="Postgres connections (default: the meter's pool, %(default)s)",
    )
    parser.add_argument("--rate", type=float, help="open loop: offer this many admissions a second")
    parser.add_argument("--database-url", help="a Postgres to use instead of an embedded one")
    args = parser.parse_args()
    options = {
        "decisions": args.decisions,
        "principals": args.principals,
        "concurrency": args.concurrency,
        "pool_size": args.pool_size,
        "rate": args.rate,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            result = asyncio.run(run(args.database_url, **options))
        else:
            with EmbeddedPostgres(Path(tmp) / "pg") as pg:
                result = asyncio.run(run(pg.url, **options))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
