from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from tollgate_core import db
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.limits import TierConfig, TierSpec, WindowSpec
from tollgate_meter.main import MIGRATIONS

#: small limits so tests reach them quickly
TEST_TIERS = TierConfig(
    default_tier="standard",
    tiers={
        "standard": TierSpec(
            windows=(
                WindowSpec(name="rolling-10m", kind="trailing", seconds=600, output=1_000),
                WindowSpec(
                    name="daily", kind="trailing", seconds=86_400, input=5_000, output=2_000
                ),
                WindowSpec(name="monthly", kind="calendar-month", input=50_000, output=20_000),
            )
        ),
        "premium": TierSpec(
            rank=10,
            windows=(WindowSpec(name="daily", kind="trailing", seconds=86_400, output=100_000),),
        ),
    },
    groups={"premium": "premium"},
)


@pytest.fixture
async def meter_db(database_factory: DatabaseFactory) -> DatabaseSettings:
    settings = await database_factory()
    await db.migrate(settings, MIGRATIONS)
    return settings


@contextlib.asynccontextmanager
async def ledger_on(
    settings: DatabaseSettings, application_name: str
) -> AsyncIterator[PostgresLedger]:
    """A ledger as one meter replica has it: its own engine and connection pool."""
    engine = create_engine(settings, application_name=application_name)
    try:
        yield PostgresLedger(engine, TEST_TIERS, bucket_seconds=600, tier_cache_s=0)
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_ledger(meter_db: DatabaseSettings) -> AsyncIterator[PostgresLedger]:
    async with ledger_on(meter_db, "test") as ledger:
        yield ledger


@pytest.fixture
def ledger(postgres_ledger: PostgresLedger) -> PostgresLedger:
    return postgres_ledger


class Inspect:
    """Reads the ledger's tables the way an auditor would."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.engine = db.create_engine(settings, application_name="inspect")

    async def rows(self, sql: str, **params: object) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]

    async def buckets(self, principal: str) -> tuple[int, int, int, int]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(input_tokens),0), coalesce(sum(output_tokens),0),"
                        " coalesce(sum(reserved_input),0), coalesce(sum(reserved_output),0)"
                        " FROM meter.buckets WHERE principal = :p"
                    ),
                    {"p": principal},
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    async def periods(self, principal: str) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(input_tokens),0), coalesce(sum(output_tokens),0)"
                        " FROM meter.periods WHERE principal = :p"
                    ),
                    {"p": principal},
                )
            ).one()
        return int(row[0]), int(row[1])

    async def settled(self, principal_prefix: str) -> tuple[int, int, int]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), coalesce(sum(input_tokens),0),"
                        " coalesce(sum(output_tokens),0)"
                        " FROM meter.reservations WHERE status = 'settled' AND principal LIKE :p"
                    ),
                    {"p": principal_prefix + "%"},
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2])


@pytest.fixture
async def inspect(meter_db: DatabaseSettings) -> AsyncIterator[Inspect]:
    inspector = Inspect(meter_db)
    try:
        yield inspector
    finally:
        await inspector.engine.dispose()
