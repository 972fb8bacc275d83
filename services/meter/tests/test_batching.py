"""Group commit: a principal's concurrent admissions share a transaction, stay exact, and
one request the ledger cannot take fails nobody else."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from tollgate_core.errors import DependencyUnavailable
from tollgate_meter.adapters.postgres import PostgresLedger
from tollgate_meter.batching import AdmissionBatcher
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
