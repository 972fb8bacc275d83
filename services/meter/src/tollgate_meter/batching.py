"""Group commit: concurrent admissions of a principal share one transaction, and so do the
usage records a settlement fetch brings.

Admission must hold the principal's row lock while it reads the counters and writes the
reservation, so two transactions of one principal can never both pass a limit. Taken one
request at a time that lock makes one API key's concurrent requests queue for each other's
whole transactions. The batcher instead lets at most one transaction per principal run in
this process; the requests that arrive meanwhile wait for it to end and are then decided
together, in arrival order, by the ledger's ``admit_many`` — one lock, one read, one write
for all of them. Exactness is the ledger's (the row lock still orders batches from different
meter replicas); the batcher only changes how many requests one lock decides.

Settlement is the same with one key for all: the records handled together (the settlement
consumer runs its handlers side by side) are settled by one ``settle_many`` statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from tollgate_core.contracts import UsageRecordV1
from tollgate_core.errors import DependencyUnavailable
from tollgate_meter.ports import AdmissionRequest, Admissions, BatchSettlements, Decision

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class GroupCommit(Generic[ItemT, ResultT]):
    """Items of one key submitted while that key's commit runs wait for it to end and are
    then committed together (up to ``max_batch``), in arrival order, by ``commit``."""

    def __init__(
        self,
        name: str,
        commit: Callable[[str, list[ItemT]], Awaitable[Sequence[ResultT]]],
        *,
        max_batch: int = 100,
    ) -> None:
        self._name = name
        self._commit = commit
        self._max_batch = max_batch
        self._waiting: dict[str, list[tuple[ItemT, asyncio.Future[ResultT]]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, key: str, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((item, future))
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._drain(key), name=f"{self._name}-{key}")
        return await future

    def _take(self, key: str) -> list[tuple[ItemT, asyncio.Future[ResultT]]]:
        waiting = self._waiting.pop(key, [])
        batch, rest = waiting[: self._max_batch], waiting[self._max_batch :]
        if rest:
            self._waiting[key] = rest
        return [(i, f) for i, f in batch if not f.cancelled()]

    async def _drain(self, key: str) -> None:
        try:
            while key in self._waiting:
                batch = self._take(key)
                if batch:
                    await self._run(key, batch)
        finally:
            del self._tasks[key]

    async def _run(self, key: str, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._commit(key, [i for i, _ in batch])
        except DependencyUnavailable as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to every waiting handler
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            # one item the ledger cannot take must not fail the others: commit each alone
            logger.warning("%s batch of %d failed (%s); one by one", self._name, len(batch), exc)
            for waiting in batch:
                await self._run(key, [waiting])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


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


def _fail(future: asyncio.Future[ResultT], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
