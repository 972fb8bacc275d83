"""Reply events from Kafka to the clients waiting for them."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tollgate_core.bus import Delivered
from tollgate_core.bus import headers as h
from tollgate_core.contracts import (
    EmbeddingsChunkV1,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
)
from tollgate_stream.appsync.channels import Channel, parse_channel
from tollgate_stream.chat import dumps, outbound_events
from tollgate_stream.errors import AppSyncError
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.waiters import ReplyWaiters

logger = logging.getLogger(__name__)

Reply = ReplyChunkV1 | ReplyChunkV2 | ReplyDoneV1 | ReplyErrorV1 | EmbeddingsChunkV1


class ChannelSink(Protocol):
    """Where replies for an AppSync channel go: local subscribers, or a remote AppSync API."""

    def deliver(self, channel: Channel, event: str) -> int: ...


class UsageAnnotator(Protocol):
    """Adds the caller's usage to an answer's last (``metadata``) event."""

    async def annotate(self, reply: ReplyDoneV1, event: dict[str, Any]) -> None: ...


class ReplyDispatcher:
    """Delivers each reply once, in order: a redelivered (request, seq) is dropped.

    Replies that name an AppSync channel go to its subscribers (``subscriptions``); the others
    (OpenAI API requests) go to the HTTP request waiting for them (``waiters``), if it still
    is. Either may be None: those replies are then not this dispatcher's to deliver."""

    def __init__(
        self,
        subscriptions: ChannelSink | None,
        waiters: ReplyWaiters | None = None,
        *,
        remember: int = 100_000,
        usage: UsageAnnotator | None = None,
        max_annotating: int = 1000,
    ) -> None:
        self._subscriptions = subscriptions
        self._waiters = waiters
        self._usage = usage
        #: metadata events waiting for the meter; past ``max_annotating`` (a meter that
        #: is slow to answer) the next ones go out at once, without usage
        self._annotating: set[asyncio.Task[None]] = set()
        self._max_annotating = max_annotating
        self._next_seq: OrderedDict[str, int] = OrderedDict()
        self._remember = remember

    async def __call__(self, delivered: Delivered[Reply]) -> None:
        reply = delivered.event
        expected = self._next_seq.get(reply.request_id, 0)
        if reply.seq < expected:
            return
        self._next_seq[reply.request_id] = reply.seq + 1
        self._next_seq.move_to_end(reply.request_id)
        while len(self._next_seq) > self._remember:
            self._next_seq.popitem(last=False)
        if reply.channel is None:
            if self._waiters is not None:
                self._waiters.deliver(reply)
            return
        if self._subscriptions is None or isinstance(reply, EmbeddingsChunkV1):
            return  # vectors go to the HTTP request that asked, never to a channel
        try:
            channel = parse_channel(reply.channel, allow_wildcard=False)
        except AppSyncError:
            logger.warning("reply %s names an invalid channel", reply.request_id)
            return
        events = outbound_events(reply)
        if (
            isinstance(reply, ReplyDoneV1)
            and self._usage is not None
            and len(self._annotating) < self._max_annotating
        ):
            # the metadata event waits for the meter; the reply stream does not wait for it
            last = events.pop()
            task = asyncio.create_task(
                _annotated(self._usage, self._subscriptions, channel, reply, last)
            )
            self._annotating.add(task)
            task.add_done_callback(self._annotating.discard)
        for event in events:
            self._subscriptions.deliver(channel, dumps(event))

    async def drain(self) -> None:
        """Wait for the metadata events still waiting for the meter."""
        if self._annotating:
            await asyncio.gather(*self._annotating, return_exceptions=True)


async def _annotated(
    usage: UsageAnnotator,
    sink: ChannelSink,
    channel: Channel,
    reply: ReplyDoneV1,
    event: dict[str, Any],
) -> None:
    await usage.annotate(reply, event)
    sink.deliver(channel, dumps(event))


def local_interest(
    subscriptions: Subscriptions | None,
    waiters: ReplyWaiters | None,
    *,
    every_channel: bool = False,
) -> Callable[[Mapping[str, str]], bool]:
    """Whether a reply, by its Kafka headers, is for a client of this process: a subscriber
    of its channel (or of a ``/*`` above it), or — empty channel header — the HTTP request
    waiting for its id. ``every_channel``: every reply with a channel is wanted (bridge mode
    hands them all to the remote AppSync API). A reply without the channel header (from a
    router older than the header) is let through and decided after decoding."""

    def accept(headers: Mapping[str, str]) -> bool:
        channel = headers.get(h.CHANNEL)
        if channel is None:
            return True
        if channel:
            return every_channel or (subscriptions is not None and subscriptions.wants(channel))
        request_id = headers.get(h.REQUEST_ID)
        return waiters is not None and request_id is not None and request_id in waiters

    return accept
