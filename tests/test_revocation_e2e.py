"""Revocation end to end: the edge and the real auth service in-process. An API key revoked
through the auth service, while its WebSocket holds a subscription, loses it and the
connection within the re-authorization interval."""

from __future__ import annotations

import asyncio
import time

import pytest

from tollgate_stream.settings import StreamSettings

from .test_identity_matrix import World


@pytest.mark.timeout(60)
def test_a_revoked_api_key_is_disconnected_from_its_subscriptions() -> None:
    world = World(
        StreamSettings(keepalive_interval_s=3600, auth_cache_ttl_s=0, reauthorize_interval_s=0.3)
    )
    secret, record = asyncio.run(world.auth.api_keys.create("alice"))
    with world.edge, world.socket(**{"x-api-key": secret}) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/alice"})
        assert ws.receive_json()["type"] == "subscribe_success"
        asyncio.run(world.keys.revoke(record.key_id))
        revoked_at = time.monotonic()
        error = ws.receive_json()
        assert time.monotonic() - revoked_at < 5
        assert error["type"] == "connection_error"
        assert error["errors"][0]["errorType"] == "UnauthorizedException"
        assert ws.receive()["type"] == "websocket.close"
