"""Group commit for admissions: a principal's concurrent requests share one transaction.

Admission must hold the principal's row lock while it reads the counters and writes the
reservation, so two transactions of one principal can never both pass a limit. Taken one
request at a time that lock makes one API key's concurrent requests queue for each other's
whole transactions. The batcher instead lets at most one transaction per principal run in
this process; the requests that arrive meanwhile wait for it to end and are then decided
together, in arrival order, by the ledger's ``admit_many`` — one lock, one read, one write
for all of them. Exactness is the ledger's (the row lock still orders batches from different
meter replicas); the batcher only changes how many requests one lock decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from tollgate_core.errors import DependencyUnavailable
from tollgate_meter.ports import AdmissionRequest, Admissions, Decision

logger = logging.getLogger(__name__)

_Waiting = tuple[AdmissionRequest, "asyncio.Future[Decision]"]


class AdmissionBatcher:
    def __init__(
        self, ledger: Admissions, clock: Callable[[], datetime], *, max_batch: int = 100
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._max_batch = max_batch
        self._waiting: dict[str, list[_Waiting]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def admit(self, principal: str, request: AdmissionRequest) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(principal, []).append((request, future))
        if principal not in self._tasks:
            self._tasks[principal] = asyncio.create_task(
                self._drain(principal), name=f"admit-{principal}"
            )
        return await future

    def _take(self, principal: str) -> list[_Waiting]:
        waiting = self._waiting.pop(principal, [])
        batch, rest = waiting[: self._max_batch], waiting[self._max_batch :]
        if rest:
            self._waiting[principal] = rest
        return [(r, f) for r, f in batch if not f.cancelled()]

    async def _drain(self, principal: str) -> None:
        try:
            while principal in self._waiting:
                batch = self._take(principal)
                if batch:
                    await self._decide(principal, batch)
        finally:
            del self._tasks[principal]

    async def _decide(self, principal: str, batch: list[_Waiting]) -> None:
        try:
            decisions = await self._ledger.admit_many(
                principal, [r for r, _ in batch], self._clock()
            )
        except DependencyUnavailable as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to every waiting handler
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            # one request the ledger cannot take must not fail the others: decide each alone
            logger.warning(
                "admission batch of %d failed (%s); deciding one by one", len(batch), exc
            )
            for waiting in batch:
                await self._decide(principal, [waiting])
            return
        for (_, future), decision in zip(batch, decisions, strict=True):
            if not future.done():
                future.set_result(decision)


def _fail(future: asyncio.Future[Decision], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
