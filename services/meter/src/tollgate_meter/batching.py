"""Group commit: concurrent admissions of a principal are decided together, and so are the
usage records a settlement fetch brings.

Two admissions of one principal must never both pass a limit on counters that miss the
other's reservation; the ledger makes each batch's write a compare-and-set on the
principal's row, so of two racing batches one writes and the other reads and decides again.
Taken one request at a time that would make one API key's concurrent requests race each
other (or, under a lock, queue for each other). The batcher instead lets at most one
admission per principal run in this process; the requests that arrive meanwhile wait for it
to end and are then decided together, in arrival order, by the ledger's ``admit_many`` — one
read and one write for all of them (:class:`tollgate_core.batching.GroupCommit`). Exactness
is the ledger's (the compare-and-set still orders batches from different meter replicas);
the batcher only changes how many requests one read and write decide.

Settlement is the same with one key for all: the records handled together (the settlement
consumer runs its handlers side by side) are settled by one ``settle_many`` statement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from tollgate_core.batching import GroupCommit
from tollgate_core.contracts import UsageRecordV1
from tollgate_meter.ports import AdmissionRequest, Admissions, BatchSettlements, Decision


class AdmissionBatcher:
    def __init__(
        self, ledger: Admissions, clock: Callable[[], datetime], *, max_batch: int = 100
    ) -> None:
        async def admit_many(principal: str, requests: list[AdmissionRequest]) -> list[Decision]:
            return await ledger.admit_many(principal, requests, clock())

        self._batches = GroupCommit("admit", admit_many, max_batch=max_batch)

    async def admit(self, principal: str, request: AdmissionRequest) -> Decision:
        return await self._batches.submit(principal, request)


class SettlementBatcher:
    """A :class:`~tollgate_meter.ports.Settlements` that settles the records handled at the
    same time in one statement of ``ledger``."""

    def __init__(self, ledger: BatchSettlements, *, max_batch: int = 200) -> None:
        async def settle_many(_: str, usages: list[tuple[UsageRecordV1, datetime]]) -> list[bool]:
            return await ledger.settle_many([u for u, _ in usages], max(t for _, t in usages))

        self._batches = GroupCommit("settle", settle_many, max_batch=max_batch)

    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        return await self._batches.submit("", (usage, now))
