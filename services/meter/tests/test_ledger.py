"""The Postgres ledger against a real Postgres, migrated by the service's own migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from tollgate_core import db
from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_core.settings import DatabaseSettings
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import TierSpec, WindowSpec

from .conftest import ledger_on

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def usage(request_id: str, principal: str = "alice", inp: int = 3, out: int = 7) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id,
        principal=principal,
        model="m",
        provider="local",
        usage=Usage(input_tokens=inp, output_tokens=out),
        cost_usd=Decimal("0.01"),
    )


async def test_migrations_are_repeatable(meter_db: DatabaseSettings) -> None:
    from tollgate_meter.main import MIGRATIONS

    await db.migrate(meter_db, MIGRATIONS)


async def test_admission_reserves_once_per_request(ledger: PostgresLedger, inspect: Any) -> None:
    first = await ledger.admit("r1", "alice", "m", (), Estimate(10, 100), NOW)
    again = await ledger.admit("r1", "alice", "m", (), Estimate(10, 100), NOW)
    assert first.admitted and not first.repeated and first.tier == "standard"
    assert again.admitted and again.repeated
    assert await inspect.buckets("alice") == (0, 0, 10, 100)


async def test_settlement_replaces_the_estimate_once(ledger: PostgresLedger, inspect: Any) -> None:
    await ledger.admit("r2", "alice", "m", (), Estimate(10, 100), NOW)
    assert await ledger.settle(usage("r2"), NOW + timedelta(seconds=5)) is True
    assert await ledger.settle(usage("r2", out=999), NOW) is False  # a replayed usage record
    row = await ledger.get("r2")
    assert row is not None and (row.status, row.input_tokens, row.output_tokens) == (
        "settled",
        3,
        7,
    )
    assert await inspect.buckets("alice") == (3, 7, 0, 0)
    assert await inspect.periods("alice") == (3, 7)


async def test_usage_without_a_reservation_is_recorded_once(
    ledger: PostgresLedger, inspect: Any
) -> None:
    assert await ledger.settle(usage("orphan"), NOW) is True
    assert await ledger.settle(usage("orphan"), NOW) is False
    assert await inspect.buckets("alice") == (3, 7, 0, 0)


async def test_a_batch_of_usage_records_settles_as_the_records_would_one_by_one(
    ledger: PostgresLedger, inspect: Any
) -> None:
    for rid in ("b1", "b2", "b3"):
        await ledger.admit(rid, "alice", "m", (), Estimate(10, 100), NOW)
    await ledger.settle(usage("b3"), NOW)
    await ledger.release_expired(NOW + timedelta(days=1))  # b1 and b2 given back...
    await ledger.admit("b4", "alice", "m", (), Estimate(10, 100), NOW)  # ...b4 still held
    late = usage("b-orphan", "bob", 1, 2)  # never admitted here
    batch = [usage("b1"), usage("b4", out=50), usage("b3"), late, usage("b1", out=999)]
    # the first record of b1 counts, its replay and the one settled before do not
    assert await ledger.settle_many(batch, NOW) == [True, True, False, True, False]
    row = await ledger.get("b4")
    assert row is not None and (row.status, row.output_tokens) == ("settled", 50)
    sql = "SELECT cost_usd, model FROM meter.reservations WHERE request_id = :r"
    assert await inspect.rows(sql, r="b-orphan") == [(Decimal("0.01"), "m")]
    # b3 and b1 settled (7 each), b4 (50); b2 given back and never settled; no reservation open
    assert await inspect.buckets("alice") == (9, 64, 0, 0)
    assert await inspect.periods("alice") == (9, 64)
    assert await inspect.buckets("bob") == (1, 2, 0, 0)
    assert await ledger.settle_many([usage("b4"), usage("b-orphan", "bob")], NOW) == [
        False,
        False,
    ]
    assert await inspect.buckets("alice") == (9, 64, 0, 0)


async def test_a_batch_with_a_record_postgres_cannot_store_changes_nothing(
    ledger: PostgresLedger, inspect: Any
) -> None:
    await ledger.admit("c1", "alice", "m", (), Estimate(10, 100), NOW)
    huge = usage("c2", inp=3_000_000_000)  # past an integer column
    with pytest.raises(RequestError):
        await ledger.settle_many([usage("c1"), huge], NOW)
    assert await inspect.buckets("alice") == (0, 0, 10, 100)  # the batch is one transaction
    assert await ledger.settle_many([usage("c1")], NOW) == [True]


async def test_a_rejection_names_the_window_and_is_remembered(ledger: PostgresLedger) -> None:
    assert (await ledger.admit("a", "bob", None, (), Estimate(10, 900), NOW)).admitted
    refused = await ledger.admit("b", "bob", None, (), Estimate(10, 900), NOW)
    assert not refused.admitted and refused.violation is not None
    assert (refused.violation.window, refused.violation.dimension) == ("rolling-10m", "output")
    assert refused.violation.used == 900 and refused.violation.limit == 1_000
    assert refused.violation.retry_after_s is not None
    again = await ledger.admit("b", "bob", None, (), Estimate(10, 1), NOW)
    assert again.repeated and not again.admitted  # the same request keeps its decision


async def test_fifty_concurrent_admissions_never_pass_the_limit(
    ledger: PostgresLedger, inspect: Any
) -> None:
    # 10-minute output limit 1,000; each request reserves 100: exactly ten fit
    results = await asyncio.gather(
        *(ledger.admit(f"c{i}", "carol", None, (), Estimate(5, 100), NOW) for i in range(50))
    )
    admitted = [r for r in results if r.admitted]
    assert len(admitted) == 10
    assert all(
        r.violation is not None and r.violation.window == "rolling-10m"
        for r in results
        if not r.admitted
    )
    assert await inspect.buckets("carol") == (0, 0, 50, 1_000)


async def test_fifty_concurrent_admissions_of_a_known_principal_never_pass_the_limit(
    ledger: PostgresLedger, inspect: Any
) -> None:
    # the principal's row exists: every admission's write is a compare-and-set on it
    assert (await ledger.admit("k", "kim", None, (), Estimate(5, 100), NOW)).admitted
    results = await asyncio.gather(
        *(ledger.admit(f"k{i}", "kim", None, (), Estimate(5, 100), NOW) for i in range(50))
    )
    assert sum(r.admitted for r in results) == 9
    assert await inspect.buckets("kim") == (0, 0, 50, 1_000)


@pytest.fixture
async def other_meter(meter_db: DatabaseSettings) -> AsyncIterator[PostgresLedger]:
    """A second meter replica on the same ledger."""
    async with ledger_on(meter_db, "other-meter") as ledger:
        yield ledger


def race_after_reads(
    monkeypatch: pytest.MonkeyPatch, ledger: PostgresLedger, races: list[Any]
) -> list[int]:
    """After each of ``ledger``'s next reads of a principal's state, run the next of
    ``races`` (an awaitable factory) to completion — another replica admitting between
    this one's read and its write. Returns a list that counts the reads."""
    read = ledger._state
    reads: list[int] = []

    async def state(*args: Any) -> Any:
        result = await read(*args)
        reads.append(1)
        if races:
            await races.pop(0)()
        return result

    monkeypatch.setattr(ledger, "_state", state)
    return reads


async def test_an_admission_that_loses_the_race_is_decided_again(
    ledger: PostgresLedger,
    other_meter: PostgresLedger,
    inspect: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # both read 10 of the 1,000 output tokens reserved; the other replica writes first
    assert (await ledger.admit("n0", "nina", None, (), Estimate(5, 10), NOW)).admitted
    other = []

    async def other_admits() -> None:
        other.append(await other_meter.admit("n2", "nina", None, (), Estimate(5, 600), NOW))

    reads = race_after_reads(monkeypatch, ledger, [other_admits])
    late = await ledger.admit("n1", "nina", None, (), Estimate(5, 600), NOW)
    assert other[0].admitted
    assert not late.admitted and late.violation is not None  # decided on 610 reserved
    assert late.violation.window == "rolling-10m"
    assert len(reads) == 2
    assert await inspect.buckets("nina") == (0, 0, 10, 610)


async def test_a_replica_of_the_previous_release_makes_a_racing_batch_decide_again(
    ledger: PostgresLedger, inspect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # during a rolling upgrade the previous release still locks the row with
    # meter.admission_state_many(); since migration 0008 that counts as an admission too
    assert (await ledger.admit("p0", "pia", None, (), Estimate(5, 10), NOW)).admitted

    async def previous_release_locks() -> None:
        async with inspect.engine.begin() as conn:
            await conn.execute(
                text(
                    "SELECT * FROM meter.admission_state_many("
                    "'pia', ARRAY['p2'], CAST(:now AS timestamptz), CAST(:m AS date))"
                ),
                {"now": NOW, "m": NOW.date().replace(day=1)},
            )

    reads = race_after_reads(monkeypatch, ledger, [previous_release_locks])
    assert (await ledger.admit("p1", "pia", None, (), Estimate(5, 10), NOW)).admitted
    assert len(reads) == 2  # its first write found the count moved on
    assert await inspect.rows(
        "SELECT admissions FROM meter.principals WHERE principal = 'pia'"
    ) == [(3,)]


async def test_an_admission_that_keeps_losing_takes_the_row_lock(
    ledger: PostgresLedger,
    other_meter: PostgresLedger,
    inspect: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollgate_meter.adapters.postgres.admission import OPTIMISTIC_TRIES

    def other_admits(i: int) -> Any:
        async def admit() -> None:
            assert (
                await other_meter.admit(f"o{i}", "olga", None, (), Estimate(1, 100), NOW)
            ).admitted

        return admit

    late: list[asyncio.Task[Any]] = []

    async def other_admits_meanwhile() -> None:
        # not awaited: its write has to wait until the lock this attempt holds is released
        late.append(asyncio.create_task(other_admits(OPTIMISTIC_TRIES)()))
        await asyncio.sleep(0.2)
        assert not late[0].done()

    # every optimistic attempt loses the race; the locked one cannot
    races = [other_admits(i) for i in range(OPTIMISTIC_TRIES)] + [other_admits_meanwhile]
    reads = race_after_reads(monkeypatch, ledger, races)
    decision = await ledger.admit("mine", "olga", None, (), Estimate(1, 100), NOW)
    await late[0]
    assert decision.admitted
    assert len(reads) == OPTIMISTIC_TRIES + 1
    requests = OPTIMISTIC_TRIES + 2
    assert await inspect.buckets("olga") == (0, 0, requests, 100 * requests)


async def test_the_window_rolls_and_the_principal_is_admitted_again(ledger: PostgresLedger) -> None:
    for i in range(10):
        await ledger.admit(f"d{i}", "dora", None, (), Estimate(5, 100), NOW)
        await ledger.settle(usage(f"d{i}", "dora", 5, 100), NOW)
    refused = await ledger.admit("late", "dora", None, (), Estimate(5, 100), NOW)
    assert refused.violation is not None and refused.violation.retry_after_s is not None
    later = NOW + timedelta(seconds=refused.violation.retry_after_s)
    assert (await ledger.admit("later", "dora", None, (), Estimate(5, 100), later)).admitted


async def test_groups_pick_the_tier_and_admins_can_change_limits(ledger: PostgresLedger) -> None:
    big = Estimate(5, 5_000)
    assert not (await ledger.admit("e1", "erin", None, (), big, NOW)).admitted
    premium = await ledger.admit("e2", "erin", None, ("premium",), big, NOW)
    assert premium.admitted and premium.tier == "premium"
    await ledger.set_principal(
        "frank", None, (WindowSpec(name="tiny", kind="trailing", seconds=60, requests=1),)
    )
    assert (await ledger.admit("f1", "frank", None, (), Estimate(1, 1), NOW)).admitted
    refused = await ledger.admit("f2", "frank", None, (), Estimate(1, 1), NOW)
    assert refused.violation is not None and refused.violation.window == "tiny"
    await ledger.set_tier("gold", TierSpec(windows=(), rank=50))
    await ledger.set_principal("frank", "gold", None)
    assert (await ledger.admit("f3", "frank", None, (), Estimate(1, 1), NOW)).tier == "gold"


async def test_unsettled_reservations_are_released(ledger: PostgresLedger, inspect: Any) -> None:
    await ledger.admit("g1", "gina", None, (), Estimate(10, 100), NOW)
    await ledger.admit("g2", "gina", None, (), Estimate(10, 100), NOW + timedelta(minutes=20))
    assert await ledger.release_expired(NOW + timedelta(minutes=15)) == 1
    assert await inspect.buckets("gina") == (0, 0, 10, 100)
    # usage arriving after the release still counts, once
    assert await ledger.settle(usage("g1", "gina", 4, 40), NOW + timedelta(minutes=16))
    assert await inspect.buckets("gina") == (4, 40, 10, 100)


async def test_report_shows_windows_and_month_by_model(ledger: PostgresLedger) -> None:
    await ledger.admit("h1", "hugo", "m", (), Estimate(10, 100), NOW)
    await ledger.settle(usage("h1", "hugo"), NOW)
    await ledger.admit("h2", "hugo", "m", (), Estimate(10, 100), NOW)
    report = await ledger.report("hugo", (), NOW)
    daily = next(w for w in report.windows if w.spec.name == "daily")
    assert (daily.used.input, daily.used.output, daily.reserved.output) == (3, 7, 100)
    assert report.by_model == [
        {
            "model": "m",
            "requests": 1,
            "input_tokens": 3,
            "output_tokens": 7,
            "cost_usd": "0.01000000",
        }
    ]


async def test_old_buckets_are_pruned(ledger: PostgresLedger, inspect: Any) -> None:
    old = NOW - timedelta(days=3)
    await ledger.admit("p1", "pia", None, (), Estimate(1, 1), old)
    await ledger.settle(usage("p1", "pia", 1, 1), old)
    await ledger.admit("p2", "pia", None, (), Estimate(1, 1), NOW)
    await ledger.settle(usage("p2", "pia", 1, 1), NOW)
    assert await ledger.prune(NOW) == 1
    assert await inspect.buckets("pia") == (1, 1, 0, 0)


async def test_unreachable_postgres_is_a_retriable_error() -> None:
    settings = DatabaseSettings(database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"))
    engine = create_engine(settings, application_name="test")
    from tollgate_meter.limits import TierConfig

    try:
        with pytest.raises(DependencyUnavailable):
            await PostgresLedger(engine, TierConfig(), bucket_seconds=600).admit(
                "r", "p", None, (), Estimate(1, 1), NOW
            )
    finally:
        await engine.dispose()


async def test_late_usage_without_a_reservation_is_booked_when_it_happened(
    ledger: PostgresLedger, inspect: Any
) -> None:
    # the meter's clock says 22 November; the usage happened just before October ended
    late = usage("late", "lena", 3, 7).model_copy(
        update={"occurred_at": datetime(2026, 10, 31, 23, 55, tzinfo=UTC)}
    )
    assert await ledger.settle(late, NOW)
    ahead = usage("ahead", "lena", 1, 1).model_copy(
        update={"occurred_at": NOW + timedelta(hours=3)}
    )
    assert await ledger.settle(ahead, NOW)
    periods = await inspect.rows(
        "SELECT period_start, input_tokens, output_tokens FROM meter.periods"
        " WHERE principal = :p ORDER BY 1",
        p="lena",
    )
    buckets = await inspect.rows(
        "SELECT bucket_start, output_tokens FROM meter.buckets WHERE principal = :p ORDER BY 1",
        p="lena",
    )
    assert periods == [(date(2026, 10, 1), 3, 7), (date(2026, 11, 1), 1, 1)]
    assert buckets == [
        (datetime(2026, 10, 31, 23, 50, tzinfo=UTC), 7),
        (NOW, 1),  # a record from the future counts now, not later
    ]
    report = await ledger.report("lena", (), NOW)
    monthly = next(w for w in report.windows if w.spec.name == "monthly")
    assert (monthly.used.input, monthly.used.output) == (1, 1)


async def test_old_finished_reservations_are_pruned_in_batches(ledger: PostgresLedger) -> None:
    # longest window of TEST_TIERS: the month (31 days); with a 14-day margin rows finished
    # before NOW - 45 days go
    margin, old, late = timedelta(days=14), NOW - timedelta(days=60), NOW - timedelta(days=40)
    for rid in ("settled", "late", "released", "open"):
        assert (await ledger.admit(rid, "olga", "m", (), Estimate(1, 10), old)).admitted
    assert not (await ledger.admit("rejected", "olga", "m", (), Estimate(1, 5_000), old)).admitted
    await ledger.settle(usage("settled", "olga"), old)
    await ledger.settle(usage("late", "olga"), late)  # its usage arrived 20 days on
    assert await ledger.release_expired(old + timedelta(minutes=1), limit=1) == 1  # "released"
    await ledger.admit("recent", "olga", "m", (), Estimate(1, 10), late)
    await ledger.settle(usage("recent", "olga"), late)

    assert await ledger.prune_reservations(NOW, margin, limit=2) == 2
    assert await ledger.prune_reservations(NOW, margin, limit=2) == 1
    assert await ledger.prune_reservations(NOW, margin, limit=2) == 0
    rows = ("settled", "late", "released", "open", "rejected", "recent")
    assert [rid for rid in rows if await ledger.get(rid) is not None] == ["late", "open", "recent"]
    # a replayed usage record whose row is kept is still recognised
    assert await ledger.settle(usage("late", "olga"), NOW) is False


async def test_a_longer_window_keeps_reservations_longer(ledger: PostgresLedger) -> None:
    old = NOW - timedelta(days=60)
    await ledger.admit("q1", "quinn", "m", (), Estimate(1, 10), old)
    await ledger.settle(usage("q1", "quinn"), old)
    await ledger.set_principal(
        "rita", None, (WindowSpec(name="quarter", kind="trailing", seconds=90 * 86_400),)
    )
    assert await ledger.prune_reservations(NOW, timedelta(days=14)) == 0
    assert await ledger.prune_reservations(NOW + timedelta(days=45), timedelta(days=14)) == 1
