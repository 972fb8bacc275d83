"""Which connection receives what: AppSync subscriptions, indexed for delivery."""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from prometheus_client import Counter, Gauge

from tollgate_stream.appsync.channels import Channel

SUBSCRIPTIONS = Gauge("tollgate_stream_subscriptions", "Active subscriptions")
DELIVERED = Counter("tollgate_stream_events_delivered_total", "data messages queued to clients")


class Subscriber(Protocol):
    def send_data(self, subscription_id: str, event: str) -> None:
        """Queue a ``data`` message; must not block."""


class Subscriptions:
    """Exact channels in one dict, ``/*`` subscriptions in another keyed by their prefix, so a
    delivery costs one lookup per segment of the channel, whatever the number of clients."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, ...], dict[tuple[Subscriber, str], None]] = defaultdict(dict)
        self._prefix: dict[tuple[str, ...], dict[tuple[Subscriber, str], None]] = defaultdict(dict)
        self._by_subscriber: dict[Subscriber, dict[str, Channel]] = defaultdict(dict)

    def add(self, subscriber: Subscriber, subscription_id: str, channel: Channel) -> None:
        self.remove(subscriber, subscription_id)
        index = self._prefix if channel.wildcard else self._exact
        index[channel.segments][(subscriber, subscription_id)] = None
        self._by_subscriber[subscriber][subscription_id] = channel
        SUBSCRIPTIONS.inc()

    def remove(self, subscriber: Subscriber, subscription_id: str) -> bool:
        channel = self._by_subscriber.get(subscriber, {}).pop(subscription_id, None)
        if channel is None:
            return False
        index = self._prefix if channel.wildcard else self._exact
        bucket = index[channel.segments]
        bucket.pop((subscriber, subscription_id), None)
        if not bucket:
            del index[channel.segments]
        SUBSCRIPTIONS.dec()
        return True

    def drop(self, subscriber: Subscriber) -> None:
        for subscription_id in list(self._by_subscriber.get(subscriber, {})):
            self.remove(subscriber, subscription_id)
        self._by_subscriber.pop(subscriber, None)

    def count(self, subscriber: Subscriber) -> int:
        return len(self._by_subscriber.get(subscriber, {}))

    def has(self, subscriber: Subscriber, subscription_id: str) -> bool:
        return subscription_id in self._by_subscriber.get(subscriber, {})

    def wants(self, channel: str) -> bool:
        """Whether any subscription here would receive an event on ``channel`` (a path such
        as ``/Outbound-Messages/u1``), without parsing or validating it."""
        segments = tuple(channel.strip("/").split("/"))
        if segments in self._exact:
            return True
        return any(segments[:n] in self._prefix for n in range(1, len(segments) + 1))

    def deliver(self, channel: Channel, event: str) -> int:
        targets = list(self._exact.get(channel.segments, {}))
        for n in range(1, len(channel.segments) + 1):
            targets += self._prefix.get(channel.segments[:n], {})
        for subscriber, subscription_id in targets:
            subscriber.send_data(subscription_id, event)
        DELIVERED.inc(len(targets))
        return len(targets)
