"""Property: two meter processes deciding, settling and releasing one principal's requests in
any interleaving never let the counted tokens pass a limit, never lose a token and never count
one twice.

Each meter is its own ledger on its own connection pool (as two replicas are), behind its own
admission and settlement batchers (a settlement goes through the batcher or straight to the
ledger, so batches race single settlements too). Hypothesis draws a sequence of steps, each
a handful of operations run concurrently — admissions on either meter, settlements (with
actual usage at most the estimate, as providers stop at ``max_tokens``), redeliveries of
decided requests, settlement records delivered twice, and the sweeper releasing what is
open — and checks the ledger after every step against a model kept from the decisions the
meters returned.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.settings import DatabaseSettings
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.batching import AdmissionBatcher, SettlementBatcher
from tollgate_meter.domain import Estimate
from tollgate_meter.ports import AdmissionRequest

from .conftest import TEST_TIERS

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
#: the binding limit of TEST_TIERS' standard tier for output: 1,000 tokens in 10 minutes
OUTPUT_LIMIT = 1_000

admit = st.tuples(st.just("admit"), st.integers(0, 1), st.integers(100, 400))
settle = st.tuples(st.just("settle"), st.integers(0, 1), st.integers(0, 10_000))
redeliver = st.tuples(st.just("redeliver"), st.integers(0, 1), st.integers(0, 10_000))
release = st.tuples(st.just("release"), st.integers(0, 1), st.just(0))
#: a step is a few racing admissions, settlements and redeliveries — or the sweeper alone
#: (a release racing a settlement could let late usage pass the limit, which is allowed)
step = st.one_of(
    st.lists(st.one_of(admit, admit, admit, settle, settle, redeliver), min_size=1, max_size=8),
    st.lists(release, min_size=1, max_size=2),
)


@dataclass
class Model:
    """What the meters said and were told: per request, its estimate and what became of it."""

    estimates: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, bool] = field(default_factory=dict)
    actual: dict[str, int] = field(default_factory=dict)  # settled output
    released: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)

    def pick(self, n: int) -> str | None:
        return self.order[n % len(self.order)] if self.order else None


@dataclass
class Meters:
    ledgers: list[PostgresLedger]
    batchers: list[AdmissionBatcher]
    settlers: list[SettlementBatcher]


@pytest.fixture
async def meters(meter_db: DatabaseSettings) -> AsyncIterator[Meters]:
    engines = [create_engine(meter_db, application_name=f"meter-{i}") for i in range(2)]
    ledgers = [PostgresLedger(e, TEST_TIERS, bucket_seconds=600, tier_cache_s=0) for e in engines]
    try:
        yield Meters(
            ledgers,
            [AdmissionBatcher(ledger, lambda: NOW) for ledger in ledgers],
            [SettlementBatcher(ledger) for ledger in ledgers],
        )
    finally:
        for engine in engines:
            await engine.dispose()


def record(request_id: str, principal: str, output: int) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id,
        principal=principal,
        model="m",
        provider="local",
        usage=Usage(input_tokens=5, output_tokens=output),
        cost_usd=Decimal("0"),
        occurred_at=NOW,
    )


async def run_op(op: tuple[str, int, int], meters: Meters, model: Model, principal: str) -> None:
    kind, meter, n = op
    ledger, batcher = meters.ledgers[meter], meters.batchers[meter]
    if kind == "admit":
        request_id = uuid.uuid4().hex
        model.estimates[request_id] = n
        model.order.append(request_id)
        decision = await batcher.admit(
            principal, AdmissionRequest(request_id, None, (), Estimate(5, n))
        )
        model.admitted[request_id] = decision.admitted
    elif kind == "redeliver" and (request_id := model.pick(n)) in model.admitted:
        first = model.admitted[request_id]
        again = await batcher.admit(
            principal,
            AdmissionRequest(request_id, None, (), Estimate(5, model.estimates[request_id])),
        )
        assert again.repeated and again.admitted == first
    elif kind == "settle" and (request_id := model.pick(n)) in model.admitted:
        if not model.admitted[request_id] or request_id in model.released:
            return  # a refused request has no usage; a released one settles at the end
        output = model.estimates[request_id] * (n % 101) // 100  # at most the estimate
        output = model.actual.setdefault(request_id, output)  # a record says one thing
        # alone, or with the other settlements racing it on that meter in one statement
        settler = meters.settlers[meter] if n % 2 else ledger
        await settler.settle(record(request_id, principal, output), NOW)
    elif kind == "release":
        # the sweeper, after the reservation TTL: everything still open is given back
        await ledger.release_expired(NOW + timedelta(hours=1), limit=10_000)


async def reconcile(ledger: PostgresLedger, model: Model) -> None:
    """Each request's row as the meters left it, checked against what they said."""
    for request_id, admitted in model.admitted.items():
        row = await ledger.get(request_id)
        assert row is not None
        if not admitted:
            assert row.status == "rejected"
        elif request_id in model.actual:
            assert row.status == "settled" and row.output_tokens == model.actual[request_id]
        else:
            assert row.status in ("reserved", "released")
            if row.status == "released":
                model.released.add(request_id)


async def counters(ledger: PostgresLedger, principal: str) -> dict[str, Any]:
    report = await ledger.report(principal, (), NOW)
    return {w.spec.name: w for w in report.windows}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=8))
async def test_two_meters_never_exceed_a_limit_lose_or_double_count_a_token(
    meters: Meters, steps: list[list[tuple[str, int, int]]]
) -> None:
    principal = f"p-{uuid.uuid4().hex[:12]}"
    model = Model()
    for ops in steps:
        # one step's operations race each other, on both meters
        await asyncio.gather(*(run_op(op, meters, model, principal) for op in ops))
        await reconcile(meters.ledgers[1], model)
        window = (await counters(meters.ledgers[0], principal))["rolling-10m"]
        # with every usage at most its estimate, nothing counted passes the limit
        assert window.counted.output <= OUTPUT_LIMIT
        # the counters are the model's: settled usage once, open reservations in full
        open_ = [
            r
            for r, ok in model.admitted.items()
            if ok and r not in model.actual and r not in model.released
        ]
        assert window.used.output == sum(model.actual.values())
        assert window.reserved.output == sum(model.estimates[r] for r in open_)
        assert window.used.requests + window.reserved.requests == sum(model.admitted.values())
    # usage that arrives after its reservation was released still counts, once
    late = [r for r in model.released if r not in model.actual]
    for request_id in late:
        model.actual[request_id] = model.estimates[request_id] // 2
    await asyncio.gather(
        *(
            meters.ledgers[i % 2].settle(record(r, principal, model.actual[r]), NOW)
            for i, r in enumerate(late * 2)  # each delivered twice, once to each meter
        )
    )
    await reconcile(meters.ledgers[0], model)
    window = (await counters(meters.ledgers[1], principal))["rolling-10m"]
    assert window.used.output == sum(model.actual.values())
    open_ = [r for r, ok in model.admitted.items() if ok and r not in model.actual]
    assert window.reserved.output == sum(model.estimates[r] for r in open_)
