"""The Postgres ledger against a real Postgres, migrated by the service's own migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tollgate_core import db
from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_meter.adapters.ledger import PostgresLedger
from tollgate_meter.domain import Estimate
from tollgate_meter.main import MIGRATIONS


@pytest.fixture
async def ledger(database_factory: DatabaseFactory) -> AsyncIterator[PostgresLedger]:
    settings = await database_factory()
    await db.migrate(settings, MIGRATIONS)
    await db.migrate(settings, MIGRATIONS)  # a second run is a no-op
    engine = db.create_engine(settings, application_name="test")
    try:
        yield PostgresLedger(engine)
    finally:
        await engine.dispose()


def usage(request_id: str, out: int = 7) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id,
        principal="alice",
        model="m",
        provider="local",
        usage=Usage(input_tokens=3, output_tokens=out),
        cost_usd=Decimal("0.01"),
    )


async def test_reservation_is_idempotent_by_request_id(ledger: PostgresLedger) -> None:
    assert await ledger.reserve("r1", "alice", "m", Estimate(10, 100)) is True
    assert await ledger.reserve("r1", "alice", "m", Estimate(10, 100)) is False
    row = await ledger.get("r1")
    assert row is not None and row.status == "reserved"


async def test_settlement_replaces_the_estimate_once(ledger: PostgresLedger) -> None:
    await ledger.reserve("r2", "alice", "m", Estimate(10, 100))
    assert await ledger.settle(usage("r2")) is True
    assert await ledger.settle(usage("r2", out=999)) is False  # a replayed usage record
    row = await ledger.get("r2")
    assert row is not None
    assert (row.status, row.input_tokens, row.output_tokens) == ("settled", 3, 7)


async def test_usage_without_a_reservation_is_still_recorded_once(ledger: PostgresLedger) -> None:
    assert await ledger.settle(usage("orphan")) is True
    assert await ledger.settle(usage("orphan")) is False
    row = await ledger.get("orphan")
    assert row is not None and row.output_tokens == 7


async def test_unreachable_postgres_is_a_retriable_error() -> None:
    from pydantic import SecretStr

    from tollgate_core.errors import DependencyUnavailable
    from tollgate_core.settings import DatabaseSettings

    settings = DatabaseSettings(database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"))
    engine = db.create_engine(settings, application_name="test")
    try:
        with pytest.raises(DependencyUnavailable):
            await PostgresLedger(engine).reserve("r", "p", None, Estimate(1, 1))
        with pytest.raises(DependencyUnavailable):
            await db.ping(engine)
    finally:
        await engine.dispose()
