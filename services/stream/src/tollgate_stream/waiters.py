"""Replies addressed to one waiting HTTP request (the OpenAI API), by request id.

The :class:`ReplyDispatcher` hands every de-duplicated reply without an AppSync channel to
:meth:`ReplyWaiters.deliver`; the request that registered the id reads them from its queue.
A reply for an id nobody waits for (the client went away) is dropped: the request still runs to
its end upstream and is metered there.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from tollgate_core.contracts import (
    EmbeddingsChunkV1,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
)

logger = logging.getLogger(__name__)

WAITERS = Gauge("tollgate_stream_reply_waiters", "HTTP requests waiting for their replies")

Reply = ReplyChunkV1 | ReplyChunkV2 | ReplyDoneV1 | ReplyErrorV1 | EmbeddingsChunkV1


class WaiterOverflow(Exception):
    """The waiter fell behind by more than its queue holds."""


class Waiter:
    """The replies of one request, in order. ``next()`` raises :class:`WaiterOverflow` if the
    reader fell too far behind (the replies in between are lost, so the stream must end)."""

    def __init__(self, request_id: str, size: int) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[Reply | None] = asyncio.Queue(size)
        self.overflowed = False
        #: the end marker was taken from the queue by :meth:`ready`; ``next()`` raises
        self._ended = False

    def put(self, reply: Reply) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(reply)
        except asyncio.QueueFull:
            self.overflowed = True
            logger.warning("request %s fell behind its replies", self.request_id)
            self._queue.get_nowait()  # make room for the end marker
            self._queue.put_nowait(None)

    async def next(self) -> Reply:
        if self._ended:
            raise WaiterOverflow(self.request_id)
        reply = await self._queue.get()
        if reply is None:
            raise WaiterOverflow(self.request_id)
        return reply

    def ready(self) -> list[Reply]:
        """The replies that have already arrived, in order, without waiting (none past an
        overflow: ``next()`` raises for it)."""
        replies: list[Reply] = []
        while not self._ended and not self._queue.empty():
            reply = self._queue.get_nowait()
            if reply is None:
                self._ended = True
            else:
                replies.append(reply)
        return replies


class ReplyWaiters:
    def __init__(self, *, queue_size: int = 4096) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._queue_size = queue_size

    def register(self, request_id: str) -> Waiter:
        waiter = Waiter(request_id, self._queue_size)
        self._waiters[request_id] = waiter
        WAITERS.set(len(self._waiters))
        return waiter

    def discard(self, request_id: str) -> None:
        if self._waiters.pop(request_id, None) is not None:
            WAITERS.set(len(self._waiters))

    def deliver(self, reply: Reply) -> bool:
        """Hand ``reply`` to its waiter; ``False`` when nobody waits for it."""
        waiter = self._waiters.get(reply.request_id)
        if waiter is None:
            return False
        waiter.put(reply)
        return True

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)
