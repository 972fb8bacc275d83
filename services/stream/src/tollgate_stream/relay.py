"""Relay mode: a plain AppSync Events pub/sub API with no pipeline behind it.

What a remote AppSync Events API is to bridge mode, for development and tests: publishes are
broadcast to the subscribers of the channel, and (as the ``onPublish`` handler bridge mode
asks the remote to have) each event on the inbound namespace gets its ``channel`` added.
It checks credentials as AppSync would when given some to check (see
:class:`RelayAuthorizer`).
"""

from __future__ import annotations

import hashlib
import hmac

from botocore.credentials import Credentials

from tollgate_core.errors import RequestError
from tollgate_stream.appsync import auth_headers
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.appsync.events import (
    PublishResult,
    check_events,
    declared_channel,
    read_event,
)
from tollgate_stream.bridge.auth import publish_body, subscribe_body
from tollgate_stream.bridge.verify import SigV4Verifier
from tollgate_stream.chat import dumps
from tollgate_stream.errors import AppSyncError
from tollgate_stream.identity import Identity
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions


class RelayAuthorizer:
    """What an AppSync Events API checks of its callers: an API key it knows
    (``TOLLGATE_STREAM_RELAY_API_KEYS``), or a SigV4 signature for service ``appsync`` by the
    configured IAM credentials, over the body AppSync defines for each operation (``{}`` for
    the connect, ``{"channel"}`` for a subscribe, the request body for a publish). With
    neither configured, every caller is let in."""

    def __init__(
        self,
        api_keys: tuple[str, ...] = (),
        iam: Credentials | None = None,
        region: str = "us-east-1",
    ) -> None:
        self._api_keys = api_keys
        self._iam = None if iam is None else SigV4Verifier(iam, region)

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> RelayAuthorizer:
        iam = None
        if settings.relay_iam_access_key_id and settings.relay_iam_secret_access_key:
            iam = Credentials(
                settings.relay_iam_access_key_id,
                settings.relay_iam_secret_access_key.get_secret_value(),
            )
        return cls(settings.relay_api_key_list, iam, settings.relay_region)

    def check(self, headers: dict[str, str], payload_sha256: str) -> None:
        if not self._api_keys and self._iam is None:
            return
        key = headers.get("x-api-key")
        if key is not None and any(hmac.compare_digest(key, k) for k in self._api_keys):
            return
        if self._iam is not None and "authorization" in headers:
            self._iam.verify(
                headers,
                url=f"https://{headers.get('host', '')}/event",
                payload_sha256=payload_sha256,
            )
            return
        raise AppSyncError.unauthorized()

    async def connect(self, headers: dict[str, str]) -> None:
        if any(k in headers for k in auth_headers.CREDENTIAL_HEADERS):
            self.check(headers, _sha256("{}"))

    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        # the relay calls this for subscribes only; its publish checks on its own
        self.check(headers, _sha256(subscribe_body(channel.path)))
        return Identity(principal="relay")


def _sha256(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


class Relay:
    """The relay's publish API: AppSync's, with subscribers and nothing else behind it."""

    def __init__(self, settings: StreamSettings, subscriptions: Subscriptions) -> None:
        self._settings = settings
        self.authorizer = RelayAuthorizer.from_settings(settings)
        self._subscriptions = subscriptions

    def channel(self, path: object, *, subscribe: bool) -> Channel:
        """Any channel of a declared namespace: a relay publishes and subscribes on both."""
        return declared_channel(path, self._settings, subscribe=subscribe)

    async def publish(
        self,
        channel_path: object,
        events: object,
        headers: dict[str, str],
        *,
        body_sha256: str | None = None,
    ) -> PublishResult:
        """Each event goes to the channel's subscribers (see :class:`EventApi`)."""
        channel = self.channel(channel_path, subscribe=False)
        # an HTTP publish is signed over the body the edge received (hashed by the edge, never
        # taken from the client); over the WebSocket AppSync signs {"channel", "events"}
        signed = body_sha256 or _sha256(publish_body(channel.path, events))
        self.authorizer.check(headers, signed)
        result = PublishResult()
        for index, event in enumerate(check_events(events, self._settings)):
            identifier = f"{channel.path}#{index}"
            try:
                payload = read_event(event, self._settings).value
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
                channel, dumps(payload) if isinstance(payload, dict) else str(event)
            )
            result.successful.append({"identifier": identifier, "index": index})
        return result
