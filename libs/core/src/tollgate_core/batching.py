"""Group commit: work submitted while an earlier commit of the same key runs waits for it to
end and is then committed together with the rest that arrived meanwhile, in one statement or
one transaction.

With nothing in flight an item is committed at once, alone: a quiet service pays no added
wait. Under load the items that pile up during one round trip to the database share the next
one, so the number of statements follows the database's round-trip time, not the request
rate. The meter decides a principal's concurrent admissions and settles usage records this
way; the router writes its request journal this way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tollgate_core.errors import DependencyUnavailable

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class GroupCommit(Generic[ItemT, ResultT]):
    """Items of one key submitted while that key's commit runs wait for it to end and are
    then committed together (up to ``max_batch``), in arrival order, by ``commit``, which
    returns one result per item.

    A commit failing with :class:`DependencyUnavailable` fails every item of its batch
    (retriable for each caller); any other failure of a batch of several is taken as one
    item the store cannot take, and the batch's items are committed again one by one, so
    that only that item fails."""

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
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            # one item the store cannot take must not fail the others: commit each alone
            logger.warning("%s batch of %d failed (%s); one by one", self._name, len(batch), exc)
            for waiting in batch:
                await self._run(key, [waiting])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(future: asyncio.Future[ResultT], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
