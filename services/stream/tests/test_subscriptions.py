from __future__ import annotations

from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.subscriptions import Subscriptions


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def send_data(self, subscription_id: str, event: str) -> None:
        self.got.append((subscription_id, event))


def ch(path: str) -> object:
    return parse_channel(path, allow_wildcard=True)


def test_exact_and_wildcard_subscribers_receive_and_others_do_not() -> None:
    subs = Subscriptions()
    exact, wild, other = Recorder(), Recorder(), Recorder()
    subs.add(exact, "e", parse_channel("/Outbound-Messages/alice", allow_wildcard=False))
    subs.add(wild, "w", parse_channel("/Outbound-Messages/alice/*", allow_wildcard=True))
    subs.add(other, "o", parse_channel("/Outbound-Messages/bob", allow_wildcard=False))
    delivered = subs.deliver(parse_channel("/Outbound-Messages/alice", allow_wildcard=False), "x")
    assert delivered == 2
    assert exact.got == [("e", "x")] and wild.got == [("w", "x")] and other.got == []
    subs.deliver(parse_channel("/Outbound-Messages/alice/deep", allow_wildcard=False), "y")
    assert wild.got[-1] == ("w", "y") and exact.got == [("e", "x")]


def test_unsubscribe_and_drop() -> None:
    subs = Subscriptions()
    r = Recorder()
    channel = parse_channel("/Outbound-Messages/alice", allow_wildcard=False)
    subs.add(r, "1", channel)
    subs.add(r, "2", channel)
    assert subs.count(r) == 2
    assert subs.remove(r, "1") and not subs.remove(r, "1")
    subs.deliver(channel, "a")
    assert r.got == [("2", "a")]
    subs.drop(r)
    assert subs.count(r) == 0 and subs.deliver(channel, "b") == 0
