"""Relay mode verifies a publish's SigV4 signature over the payload it really received: a
client cannot name the hash of some other, signed body (a captured connect signature)."""

from __future__ import annotations

import hashlib
import json

from botocore.credentials import Credentials
from starlette.testclient import TestClient

from tollgate_core.health import Health
from tollgate_stream.app import create_app
from tollgate_stream.bridge.auth import IamAuth, publish_body
from tollgate_stream.relay import Relay
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions

SETTINGS = StreamSettings(
    mode="relay",
    keepalive_interval_s=3600,
    relay_iam_access_key_id="AKIDRELAY",
    relay_iam_secret_access_key="relay-secret",  # type: ignore[arg-type]
    relay_region="eu-west-1",
)
SIGNER = IamAuth(Credentials("AKIDRELAY", "relay-secret"), "eu-west-1")
URL = "https://testserver/event"
EVENTS = [json.dumps({"a": 1})]


def client() -> TestClient:
    subscriptions = Subscriptions()
    return TestClient(create_app(SETTINGS, Health(), Relay(SETTINGS, subscriptions), subscriptions))


def test_a_websocket_publish_cannot_bring_its_own_payload_hash() -> None:
    connect_headers = SIGNER.headers(URL, "{}")  # what any client sends to connect
    forged = {**connect_headers, "x-tollgate-payload-sha256": hashlib.sha256(b"{}").hexdigest()}
    with client() as http, http.websocket_connect("/event/realtime") as ws:
        ws.send_json(
            {
                "type": "publish",
                "id": "p",
                "channel": "/Outbound-Messages/victim",
                "events": EVENTS,
                "authorization": forged,
            }
        )
        answer = ws.receive_json()
    assert answer["type"] == "publish_error"
    assert answer["errors"][0]["errorType"] == "UnauthorizedException"


def test_an_http_publish_cannot_bring_its_own_payload_hash() -> None:
    connect_headers = SIGNER.headers(URL, "{}")
    body = json.dumps({"channel": "/Outbound-Messages/victim", "events": EVENTS})
    with client() as http:
        response = http.post(
            "/event",
            content=body,
            headers={
                **connect_headers,
                "x-tollgate-payload-sha256": hashlib.sha256(b"{}").hexdigest(),
            },
        )
    assert response.status_code == 401


def test_a_properly_signed_websocket_publish_passes() -> None:
    channel = "/Outbound-Messages/victim"
    signed = SIGNER.headers(URL, publish_body(channel, EVENTS))
    with client() as http, http.websocket_connect("/event/realtime") as ws:
        ws.send_json(
            {
                "type": "publish",
                "id": "p",
                "channel": channel,
                "events": EVENTS,
                "authorization": signed,
            }
        )
        assert ws.receive_json()["type"] == "publish_success"
