"""What AppSync's publish API is, whatever is behind it: the channel and event checks, the
answer, and the interface the HTTP publish endpoint and the WebSocket call — implemented by
the gateway (events become requests on Kafka) and by the relay (events go to subscribers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tollgate_core.errors import RequestError
from tollgate_stream import limits
from tollgate_stream.appsync.channels import Channel, parse_channel
from tollgate_stream.errors import AppSyncError
from tollgate_stream.identity import Authorizer
from tollgate_stream.settings import StreamSettings


@dataclass
class PublishResult:
    successful: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


class EventApi(Protocol):
    @property
    def authorizer(self) -> Authorizer:
        """Who may connect and use a channel."""
        ...

    def channel(self, path: object, *, subscribe: bool) -> Channel:
        """Parse and check a channel for a publish or a subscribe."""
        ...

    async def publish(
        self,
        channel_path: object,
        events: object,
        headers: dict[str, str],
        *,
        body_sha256: str | None = None,
    ) -> PublishResult:
        """AppSync publish semantics: the whole call fails on a bad channel, auth or event
        count; each event then succeeds or fails on its own. ``body_sha256`` is the hash of
        an HTTP publish's body, computed by the edge (relay mode verifies SigV4 over it)."""
        ...


def declared_channel(path: object, settings: StreamSettings, *, subscribe: bool) -> Channel:
    """``path`` as a channel of one of the two declared namespaces (a wildcard only for a
    subscribe)."""
    channel = parse_channel(path, allow_wildcard=subscribe)
    if channel.namespace not in (settings.inbound_namespace, settings.outbound_namespace):
        raise AppSyncError.bad_request(f"namespace {channel.namespace!r} is not declared")
    return channel


def check_events(events: object, settings: StreamSettings) -> list[object]:
    """A publish's events: a non-empty list of at most ``max_events_per_publish``."""
    if not isinstance(events, list) or not events:
        raise AppSyncError.bad_request("events must be a non-empty list of JSON strings")
    if len(events) > settings.max_events_per_publish:
        raise AppSyncError.bad_request(
            f"at most {settings.max_events_per_publish} events per publish"
        )
    return events


@dataclass(frozen=True, slots=True)
class Event:
    """One published event that passed :func:`read_event`."""

    text: str
    value: Any
    size: int


def read_event(event: object, settings: StreamSettings) -> Event:
    """One published event: a string of at most ``max_event_bytes`` holding JSON no deeper
    than ``max_json_depth``."""
    if not isinstance(event, str):
        raise RequestError("each event must be a string holding JSON")
    size = len(event.encode())
    if size > settings.max_event_bytes:
        raise RequestError(f"event exceeds {settings.max_event_bytes} bytes")
    try:
        return Event(event, limits.loads(event, settings.max_json_depth), size)
    except ValueError as exc:
        raise RequestError(f"event is not valid JSON: {exc}", details={"field": "events"}) from exc
