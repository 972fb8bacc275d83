"""Relay mode: a plain AppSync Events pub/sub API with no pipeline behind it.

What a remote AppSync Events API is to bridge mode, for development and tests: publishes are
broadcast to the subscribers of the channel, and (as the ``onPublish`` handler bridge mode
asks the remote to have) each event on the inbound namespace gets its ``channel`` added.
It verifies no credential.
"""

from __future__ import annotations

import json

from tollgate_core.bus import InMemoryPublisher
from tollgate_core.errors import RequestError
from tollgate_stream.appsync.channels import Channel, parse_channel
from tollgate_stream.chat import dumps
from tollgate_stream.errors import AppSyncError
from tollgate_stream.gateway import Gateway, PublishResult
from tollgate_stream.identity import Identity
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions


class OpenAuthorizer:
    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        return Identity(principal="relay")

    async def connect(self, headers: dict[str, str]) -> None:
        return None


class Relay(Gateway):
    def __init__(self, settings: StreamSettings, subscriptions: Subscriptions) -> None:
        super().__init__(settings, InMemoryPublisher(), OpenAuthorizer(), reply_partitions=[0])
        self._subscriptions = subscriptions

    def channel(self, path: object, *, subscribe: bool) -> Channel:
        channel = parse_channel(path, allow_wildcard=subscribe)
        if channel.namespace not in self.namespaces:
            raise AppSyncError.bad_request(f"namespace {channel.namespace!r} is not declared")
        return channel

    async def publish(
        self, channel_path: object, events: object, headers: dict[str, str]
    ) -> PublishResult:
        channel = self.channel(channel_path, subscribe=False)
        if not isinstance(events, list) or not events:
            raise AppSyncError.bad_request("events must be a non-empty list of JSON strings")
        if len(events) > self._settings.max_events_per_publish:
            raise AppSyncError.bad_request(
                f"at most {self._settings.max_events_per_publish} events per publish"
            )
        result = PublishResult()
        for index, event in enumerate(events):
            identifier = f"{channel.path}#{index}"
            try:
                payload = self._event(event)
            except RequestError as exc:
                result.failed.append(
                    {
                        "identifier": identifier,
                        "index": index,
                        "errorCode": 400,
                        "errorMessage": exc.message,
                    }
                )
                continue
            if channel.namespace == self._settings.inbound_namespace and isinstance(payload, dict):
                payload["channel"] = channel.path
            self._subscriptions.deliver(
                channel, dumps(payload) if isinstance(payload, dict) else event
            )
            result.successful.append({"identifier": identifier, "index": index})
        return result

    def _event(self, event: object) -> object:
        if not isinstance(event, str):
            raise RequestError("each event must be a string holding JSON")
        if len(event.encode()) > self._settings.max_event_bytes:
            raise RequestError(f"event exceeds {self._settings.max_event_bytes} bytes")
        try:
            return json.loads(event)
        except ValueError as exc:
            raise RequestError(f"event is not valid JSON: {exc}") from exc
