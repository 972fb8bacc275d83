"""Group commit: a principal's concurrent admissions share a transaction, stay exact, and
one request the ledger cannot take fails nobody else."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_meter.adapters.postgres import PostgresLedger
from tollgate_meter.batching import AdmissionBatcher, SettlementBatcher
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import WindowSpec
from tollgate_meter.ports import AdmissionRequest, Decision

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def req(request_id: str, output: int = 100) -> AdmissionRequest:
    return AdmissionRequest(request_id, None, (), Estimate(5, output))


class GatedLedger:
    """Admits everything; each call waits for ``gate`` and records its batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.gate = asyncio.Event()
        self.fail_on: set[str] = set()
        self.outage = False

    async def admit_many(
        self, principal: str, requests: Sequence[AdmissionRequest], now: datetime
    ) -> list[Decision]:
        self.batches.append((principal, [r.request_id for r in requests]))
        await self.gate.wait()
        if self.outage:
            raise DependencyUnavailable("Postgres unavailable: test")
        if any(r.request_id in self.fail_on for r in requests):
            raise ValueError("a request the ledger cannot take")
        return [Decision(True, f"tier-of-{r.request_id}") for r in requests]


async def test_requests_arriving_during_a_transaction_are_decided_together() -> None:
    ledger = GatedLedger()
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    tasks = [asyncio.create_task(batcher.admit("alice", req("r0")))]
    await asyncio.sleep(0.01)
    assert ledger.batches == [("alice", ["r0"])]  # the first opened a transaction
    tasks += [asyncio.create_task(batcher.admit("alice", req(f"r{i}"))) for i in range(1, 20)]
    await asyncio.sleep(0.01)
    assert len(ledger.batches) == 1
    ledger.gate.set()
    decisions = await asyncio.gather(*tasks)
    # the other nineteen waited for it and were then decided in one batch, in arrival order
    assert ledger.batches == [("alice", ["r0"]), ("alice", [f"r{i}" for i in range(1, 20)])]
    assert [d.tier for d in decisions] == [f"tier-of-r{i}" for i in range(20)]


async def test_principals_do_not_wait_for_each_other() -> None:
    ledger = GatedLedger()
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    alice = asyncio.create_task(batcher.admit("alice", req("a")))
    bob = asyncio.create_task(batcher.admit("bob", req("b")))
    await asyncio.sleep(0.01)
    assert sorted(ledger.batches) == [("alice", ["a"]), ("bob", ["b"])]
    ledger.gate.set()
    assert (await alice).tier == "tier-of-a" and (await bob).tier == "tier-of-b"


async def test_a_batch_is_capped_and_the_rest_follows() -> None:
    ledger = GatedLedger()
    ledger.gate.set()
    batcher = AdmissionBatcher(ledger, lambda: NOW, max_batch=3)
    await asyncio.gather(*(batcher.admit("alice", req(f"r{i}")) for i in range(7)))
    assert [len(ids) for _, ids in ledger.batches] == [3, 3, 1]


async def test_one_request_the_ledger_cannot_take_fails_only_itself() -> None:
    ledger = GatedLedger()
    ledger.fail_on = {"bad"}
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    first = asyncio.create_task(batcher.admit("alice", req("first")))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(batcher.admit("alice", req(i))) for i in ("x", "bad", "y")]
    ledger.gate.set()
    assert (await first).admitted
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert [r.tier for r in (results[0], results[2])] == ["tier-of-x", "tier-of-y"]  # type: ignore[union-attr]


async def test_an_outage_reaches_every_request_of_the_batch() -> None:
    ledger = GatedLedger()
    ledger.outage = True
    ledger.gate.set()
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    results = await asyncio.gather(
        *(batcher.admit("alice", req(f"r{i}")) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, DependencyUnavailable) for r in results)
    assert (await asyncio.gather(batcher.admit("bob", req("z")), return_exceptions=True))[0]


async def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    ledger = GatedLedger()
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    first = asyncio.create_task(batcher.admit("alice", req("first")))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(batcher.admit("alice", req("gone")))
    kept = asyncio.create_task(batcher.admit("alice", req("kept")))
    await asyncio.sleep(0.01)
    gone.cancel()
    ledger.gate.set()
    assert (await first).admitted and (await kept).admitted
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert ledger.batches[-1] == ("alice", ["kept"])


async def test_fifty_concurrent_admissions_through_the_batcher_stay_exact(
    ledger: PostgresLedger, inspect: Any
) -> None:
    # 10-minute output limit 1,000; each request reserves 100: exactly ten fit
    batcher = AdmissionBatcher(ledger, lambda: NOW)
    results = await asyncio.gather(*(batcher.admit("carol", req(f"c{i}")) for i in range(50)))
    assert sum(r.admitted for r in results) == 10
    assert await inspect.buckets("carol") == (0, 0, 50, 1_000)
    # a redelivered request gets its first decision back, nothing reserved twice
    again = await asyncio.gather(*(batcher.admit("carol", req(f"c{i}")) for i in range(50)))
    assert [r.admitted for r in again] == [r.admitted for r in results]
    assert all(r.repeated for r in again)
    assert await inspect.buckets("carol") == (0, 0, 50, 1_000)


async def test_a_batch_with_a_request_twice_decides_it_once(
    ledger: PostgresLedger, inspect: Any
) -> None:
    decisions = await ledger.admit_many("dave", [req("same"), req("same"), req("other")], NOW)
    assert [d.admitted for d in decisions] == [True, True, True]
    assert [d.repeated for d in decisions] == [False, True, False]
    assert await inspect.buckets("dave") == (0, 0, 10, 200)


async def test_a_batch_counts_its_own_requests_against_a_monthly_request_limit(
    ledger: PostgresLedger,
) -> None:
    await ledger.set_principal(
        "mona", None, (WindowSpec(name="monthly", kind="calendar-month", requests=2),)
    )
    decisions = await ledger.admit_many("mona", [req("m1"), req("m2"), req("m3")], NOW)
    assert [d.admitted for d in decisions] == [True, True, False]
    assert decisions[2].violation is not None and decisions[2].violation.window == "monthly"


def usage(request_id: str, output: int = 7) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id,
        principal="erin",
        model="m",
        provider="local",
        usage=Usage(input_tokens=3, output_tokens=output),
        cost_usd=Decimal(0),
        occurred_at=NOW,
    )


class GatedSettlements:
    """Settles everything; each batch waits for ``gate`` and is recorded."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail_on: set[str] = set()

    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        return (await self.settle_many([usage], now))[0]

    async def settle_many(self, usages: Sequence[UsageRecordV1], now: datetime) -> list[bool]:
        self.batches.append([u.request_id for u in usages])
        await self.gate.wait()
        if any(u.request_id in self.fail_on for u in usages):
            raise RequestError("a value cannot be stored")
        return [True for _ in usages]


async def test_records_handled_together_are_settled_in_one_batch_and_a_bad_one_alone() -> None:
    ledger = GatedSettlements()
    ledger.fail_on = {"bad"}
    settler = SettlementBatcher(ledger)
    first = asyncio.create_task(settler.settle(usage("first"), NOW))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(settler.settle(usage(r), NOW)) for r in ("x", "bad", "y")]
    await asyncio.sleep(0.01)
    ledger.gate.set()
    assert await first is True
    results = await asyncio.gather(*rest, return_exceptions=True)
    # the three waited for the first and went in one statement; that failing, each alone
    assert ledger.batches == [["first"], ["x", "bad", "y"], ["x"], ["bad"], ["y"]]
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], RequestError)


async def test_concurrent_settlements_through_the_batcher_count_each_request_once(
    ledger: PostgresLedger, inspect: Any
) -> None:
    for i in range(20):
        await ledger.admit(f"e{i}", "erin", "m", (), Estimate(5, 100), NOW)
    settler = SettlementBatcher(ledger)
    records = [usage(f"e{i % 20}") for i in range(40)]  # every record delivered twice
    results = await asyncio.gather(*(settler.settle(r, NOW) for r in records))
    assert sum(results) == 20
    assert await inspect.buckets("erin") == (60, 140, 0, 0)
