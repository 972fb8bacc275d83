"""A subscription lasts only as long as the permission behind it: a revoked credential
loses its subscriptions within the re-authorization interval, an expiring one at its
expiry, and the connection is closed with an AppSync error."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tollgate_core.bus import InMemoryPublisher
from tollgate_stream.appsync.channels import Channel, parse_channel
from tollgate_stream.appsync.websocket import Connection
from tollgate_stream.errors import AppSyncError
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import Identity
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

from .test_edge_exhaustion import Socket

CHANNEL = "/Outbound-Messages/alice"
EVENT = json.dumps({"contentBlockDelta": {"delta": {"text": "secret answer"}}})


class Keys:
    """An authorizer over a set of valid API keys, as the auth service would decide."""

    def __init__(self, expires_at: float | None = None) -> None:
        self.valid = {"tg_alice"}
        self.denied_channels: set[str] = set()
        self.expires_at = expires_at
        self.checks = 0

    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        self.checks += 1
        if headers.get("x-api-key") not in self.valid:
            raise AppSyncError.unauthorized("API key has been revoked")
        if channel.path in self.denied_channels:
            raise AppSyncError.forbidden("not your channel any more")
        return Identity(principal="alice", expires_at=self.expires_at)

    async def connect(self, headers: dict[str, str]) -> None:
        return None


def subscribing(*ids: str) -> list[str]:
    return [json.dumps({"type": "connection_init"})] + [
        json.dumps(
            {
                "type": "subscribe",
                "id": sub_id,
                "channel": CHANNEL if sub_id == "s" else f"{CHANNEL}/{sub_id}",
                "authorization": {"x-api-key": "tg_alice"},
            }
        )
        for sub_id in ids
    ]


def connection(socket: Socket, subscriptions: Subscriptions, keys: Keys) -> Connection:
    settings = StreamSettings(keepalive_interval_s=3600, reauthorize_interval_s=0.1)
    gateway = Gateway(settings, InMemoryPublisher(), keys, reply_partitions=[0])
    return Connection(socket, gateway, subscriptions, settings, {})  # type: ignore[arg-type]


def sent(socket: Socket) -> list[dict[str, Any]]:
    return [json.loads(t) for t in socket.sent]


async def test_a_revoked_key_loses_its_subscriptions_and_connection() -> None:
    subscriptions, keys, socket = Subscriptions(), Keys(), Socket(subscribing("s"))
    run = asyncio.create_task(connection(socket, subscriptions, keys).run())
    channel = parse_channel(CHANNEL, allow_wildcard=False)
    await asyncio.sleep(0.3)
    assert subscriptions.deliver(channel, EVENT) == 1  # still allowed: still delivered
    keys.valid.clear()  # an admin revokes the key
    await asyncio.wait_for(run, 5)
    assert subscriptions.deliver(channel, EVENT) == 0
    error = sent(socket)[-1]
    assert error["type"] == "connection_error"
    assert error["errors"][0]["errorType"] == "UnauthorizedException"
    assert socket.closed_with == 1008


async def test_an_expiring_credential_is_cut_off_at_its_expiry() -> None:
    subscriptions, socket = Subscriptions(), Socket(subscribing("s"))
    keys = Keys(expires_at=time.time() + 0.5)
    conn = connection(socket, subscriptions, keys)
    conn._settings = StreamSettings(keepalive_interval_s=3600, reauthorize_interval_s=3600)
    started = time.monotonic()
    await asyncio.wait_for(conn.run(), 5)
    assert 0.4 < time.monotonic() - started < 3
    assert sent(socket)[-1]["errors"][0]["errorType"] == "UnauthorizedException"
    assert subscriptions.deliver(parse_channel(CHANNEL, allow_wildcard=False), EVENT) == 0


async def test_a_channel_no_longer_allowed_loses_only_its_subscription() -> None:
    subscriptions, keys, socket = Subscriptions(), Keys(), Socket(subscribing("s", "other"))
    run = asyncio.create_task(connection(socket, subscriptions, keys).run())
    await asyncio.sleep(0.2)
    keys.denied_channels.add(f"{CHANNEL}/other")
    await asyncio.sleep(0.5)
    assert not run.done()
    assert subscriptions.deliver(parse_channel(CHANNEL, allow_wildcard=False), EVENT) == 1
    other = parse_channel(f"{CHANNEL}/other", allow_wildcard=False)
    assert subscriptions.deliver(other, EVENT) == 0
    assert any(m["type"] == "subscribe_error" and m["id"] == "other" for m in sent(socket))
    run.cancel()
