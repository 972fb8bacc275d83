"""Which replies an edge replica decodes and delivers: only those its own clients wait for."""

from __future__ import annotations

import pytest

from tollgate_core import topics
from tollgate_core.bus import Delivered
from tollgate_core.bus import headers as h
from tollgate_core.contracts import ReplyChunkV1
from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.replies import ReplyDispatcher, local_interest
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.waiters import ReplyWaiters, Waiter, WaiterOverflow


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def send_data(self, subscription_id: str, event: str) -> None:
        self.got.append((subscription_id, event))


def test_a_reply_is_accepted_only_for_a_local_subscriber_or_waiter() -> None:
    subs, waiters = Subscriptions(), ReplyWaiters()
    subs.add(Recorder(), "s", parse_channel("/Outbound-Messages/alice", allow_wildcard=False))
    subs.add(Recorder(), "w", parse_channel("/Outbound-Messages/carol/*", allow_wildcard=True))
    waiters.register("req-local")
    accept = local_interest(subs, waiters)
    assert accept({h.CHANNEL: "/Outbound-Messages/alice", h.REQUEST_ID: "r1"})
    assert accept({h.CHANNEL: "/Outbound-Messages/carol/chat-1"})
    assert not accept({h.CHANNEL: "/Outbound-Messages/bob", h.REQUEST_ID: "r2"})
    assert not accept({h.CHANNEL: "/Outbound-Messages/alice/deeper"})
    assert accept({h.CHANNEL: "", h.REQUEST_ID: "req-local"})
    assert not accept({h.CHANNEL: "", h.REQUEST_ID: "req-elsewhere"})
    # no channel header (a router older than it): decoded and decided by the dispatcher
    assert accept({h.REQUEST_ID: "req-elsewhere"})
    assert accept({})


def test_without_channel_sink_or_waiters_those_replies_are_ignored() -> None:
    accept = local_interest(None, None)
    assert not accept({h.CHANNEL: "/Outbound-Messages/alice"})
    assert not accept({h.CHANNEL: "", h.REQUEST_ID: "r"})


def test_bridge_mode_wants_every_channel_reply() -> None:
    accept = local_interest(None, ReplyWaiters(), every_channel=True)
    assert accept({h.CHANNEL: "/Outbound-Messages/anyone"})
    assert not accept({h.CHANNEL: "", h.REQUEST_ID: "not-waited-for"})


async def test_a_dispatcher_without_a_channel_sink_still_serves_waiters() -> None:
    waiters = ReplyWaiters()
    waiter = waiters.register("r1")
    dispatcher = ReplyDispatcher(None, waiters)
    for request_id, channel in (("r1", None), ("r2", "/Outbound-Messages/alice")):
        chunk = ReplyChunkV1(request_id=request_id, principal="p", seq=0, channel=channel, text="x")
        await dispatcher(Delivered(chunk, topics.REPLIES, 0, 0, None))
    assert (await waiter.next()).request_id == "r1"


def _chunk(seq: int) -> ReplyChunkV1:
    return ReplyChunkV1(request_id="r", principal="p", seq=seq, text=str(seq))


async def test_ready_takes_what_has_arrived_without_waiting() -> None:
    waiter = Waiter("r", 8)
    assert waiter.ready() == []
    for seq in range(3):
        waiter.put(_chunk(seq))
    assert [r.seq for r in waiter.ready()] == [0, 1, 2]
    assert waiter.ready() == []
    waiter.put(_chunk(3))
    assert (await waiter.next()).seq == 3


async def test_ready_stops_at_an_overflow_and_next_then_raises() -> None:
    waiter = Waiter("r", 2)
    for seq in range(3):  # one more than the queue holds: the oldest makes room for the end
        waiter.put(_chunk(seq))
    assert waiter.overflowed
    assert [r.seq for r in waiter.ready()] == [1]
    assert waiter.ready() == []
    with pytest.raises(WaiterOverflow):
        await waiter.next()
