"""The sweeper keeps going whatever one round throws at it."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tollgate_core.errors import DependencyUnavailable
from tollgate_core.health import Health
from tollgate_meter.sweeper import Sweeper

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class FlakyLedger:
    """Fails its first ``failures`` releases with an unexpected error, then works."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.releases = 0
        self.prunes = 0
        self.swept = asyncio.Event()
        self.finished = 0  # old finished reservations left to prune
        self.margins: list[timedelta] = []
        self.expired = 0  # reservations past their ttl, left to release

    async def release_expired(self, cutoff: datetime, limit: int = 500) -> int:
        self.releases += 1
        if self.releases <= self.failures:
            raise RuntimeError("a bug, not an outage")
        released = min(limit, self.expired)
        self.expired -= released
        return released

    async def prune(self, now: datetime) -> int:
        self.prunes += 1
        return 0

    async def prune_reservations(self, now: datetime, margin: timedelta, limit: int) -> int:
        self.margins.append(margin)
        deleted = min(limit, self.finished)
        self.finished -= deleted
        self.swept.set()
        return deleted


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def sweep_errors() -> float:
    return sample("tollgate_meter_sweep_errors_total")


async def ok() -> None:
    return None


def sweeper(ledger: FlakyLedger, health: Health, ping: object = ok, **options: Any) -> Sweeper:
    options.setdefault("interval_s", 0.01)
    options.setdefault("max_backoff_s", 0.05)
    return Sweeper(
        ledger,  # type: ignore[arg-type]
        health,
        lambda: NOW,
        ping,  # type: ignore[arg-type]
        ttl_s=900,
        **options,
    )


async def test_an_unexpected_error_is_logged_and_the_sweeper_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger, health = FlakyLedger(failures=1), Health()
    health.register("postgres")
    errors_before = sweep_errors()
    sweep = sweeper(ledger, health)
    with caplog.at_level(logging.ERROR, logger="tollgate_meter.sweeper"):
        sweep.start()
        try:
            await asyncio.wait_for(ledger.swept.wait(), timeout=5)
        finally:
            await sweep.stop()
    assert ledger.releases >= 2 and ledger.prunes >= 1  # the round after the failure ran
    assert sweep_errors() == errors_before + 1
    [record] = [r for r in caplog.records if "meter sweep failed" in r.getMessage()]
    assert record.exc_info is not None and "a bug, not an outage" in str(record.exc_info[1])
    assert health.ready


async def test_postgres_down_marks_it_not_ready_until_a_round_succeeds() -> None:
    ledger, health = FlakyLedger(failures=0), Health()
    health.register("postgres")
    pings = 0

    async def ping() -> None:
        nonlocal pings
        pings += 1
        if pings == 1:
            raise DependencyUnavailable("Postgres unreachable: refused")

    sweep = sweeper(ledger, health, ping)
    sweep.start()
    try:
        await asyncio.wait_for(ledger.swept.wait(), timeout=5)
    finally:
        await sweep.stop()
    assert pings >= 2 and health.ready


async def test_old_reservations_are_pruned_in_bounded_batches() -> None:
    ledger = FlakyLedger(failures=0)
    ledger.finished = 2_500
    sweep = sweeper(
        ledger, Health(), interval_s=15, margin_s=86_400, prune_batch=1_000, prune_batches=2
    )
    before = sample("tollgate_meter_reservations_pruned_total")
    await sweep.sweep_once()
    assert ledger.finished == 500  # two batches a round, the rest next round
    await sweep.sweep_once()
    assert ledger.finished == 0
    assert sample("tollgate_meter_reservations_pruned_total") == before + 2_500
    assert set(ledger.margins) == {timedelta(days=1)}


async def test_a_backlog_of_expired_reservations_drains_in_one_round() -> None:
    # a router outage leaves thousands unsettled; 500 per 15 s round would take minutes
    ledger = FlakyLedger(failures=0)
    ledger.expired = 2_300
    sweep = sweeper(ledger, Health(), interval_s=15, release_batch=500, prune_batches=20)
    before = sample("tollgate_meter_reservations_released_total")
    assert await sweep.sweep_once() == 2_300
    assert ledger.expired == 0 and ledger.releases == 5
    assert sample("tollgate_meter_reservations_released_total") == before + 2_300


def test_the_meter_pool_is_20_unless_database_pool_size_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollgate_meter.settings import MeterSettings

    monkeypatch.delenv("DATABASE_POOL_SIZE", raising=False)
    assert MeterSettings().database.database_pool_size == 20
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    assert MeterSettings().database.database_pool_size == 7
