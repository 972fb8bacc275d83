"""The cross-user attack matrix: the edge and the auth service wired together in-process
(the edge's HTTP client reaches the auth app through an ASGI transport), Kafka replaced by an
in-memory publisher. Every refused call gets AppSync's error and publishes nothing."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tollgate_auth.apikeys import InMemoryApiKeyStore
from tollgate_auth.app import build, create_app
from tollgate_auth.policy import InMemoryPolicyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core import topics
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.contracts import ChatRequestV1
from tollgate_core.health import Health
from tollgate_stream.app import create_app as create_edge
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import AuthServiceAuthorizer
from tollgate_stream.openai.api import OpenAIApi
from tollgate_stream.openai.auth import AuthServiceBearerAuthenticator
from tollgate_stream.openai.models import StaticModelCatalog
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.waiters import ReplyWaiters

ISS = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test"
POLICY = Path(__file__).parents[1] / "services" / "auth" / "policy.dev.toml"


def chat(model: str | None = None) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    if model:
        body["modelId"] = model
    return json.dumps(body)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class World:
    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.audit = InMemoryPublisher()
        self.keys = InMemoryApiKeyStore()
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key())) | {"kid": "k1", "alg": "RS256"}
        idp_http = httpx.AsyncClient(
            transport=httpx.MockTransport(lambda _: httpx.Response(200, json={"keys": [jwk]}))
        )
        self.auth = build(
            AuthSettings(
                dev_idp=True,
                policy_file=POLICY,
                issuer=ISS,
                jwks_url="https://jwks.invalid/keys",
                audiences="web-client",
                jwks_min_refresh_s=0,
            ),
            key_store=self.keys,
            policy_store=InMemoryPolicyStore(),
            publisher=self.audit,
            http=idp_http,
        )
        self.auth_app = create_app(self.auth, Health())
        settings = settings or StreamSettings(keepalive_interval_s=3600, auth_cache_ttl_s=0)
        self.publisher = InMemoryPublisher()
        authorizer = AuthServiceAuthorizer(
            httpx.AsyncClient(transport=httpx.ASGITransport(self.auth_app), base_url="http://auth"),
            inbound_namespace=settings.inbound_namespace,
            outbound_namespace=settings.outbound_namespace,
            ttl_s=0,
        )
        gateway = Gateway(settings, self.publisher, authorizer, reply_partitions=[0])
        openai_api = OpenAIApi(
            gateway,
            ReplyWaiters(),
            AuthServiceBearerAuthenticator(authorizer),
            StaticModelCatalog(["tollgate-local", "claude-big"]),
            reply_timeout_s=0.2,
        )
        self.edge = TestClient(
            create_edge(settings, Health(), gateway, Subscriptions(), openai_api)
        )

    @property
    def requests(self) -> list[ChatRequestV1]:
        return [e for e in self.publisher.on(topics.REQUESTS) if isinstance(e, ChatRequestV1)]

    def dev_token(self, sub: str, *groups: str, **extra: Any) -> str:
        assert self.auth.dev_idp is not None
        return self.auth.dev_idp.issue(sub, groups, **extra)["id_token"]

    def cognito_token(self, kid: str = "k1", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "alice", "iss": ISS, "aud": "web-client", "exp": now + 600, **claims}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": kid})

    def socket(self, token: str | None = None, **headers: str) -> Any:
        auth = {"host": "edge", **({"Authorization": token} if token else {}), **headers}
        return self.edge.websocket_connect(
            "/event/realtime",
            subprotocols=["aws-appsync-event-ws", f"header-{b64(auth)}"],
        )


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    with world.edge:
        yield world


def bad_tokens(world: World) -> dict[str, str]:
    now = int(time.time())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    none_claims = {"sub": "alice", "iss": ISS, "aud": "web-client", "exp": now + 600}
    return {
        "expired": world.dev_token("alice", expires_in=-300),
        "not-yet-valid": world.dev_token("alice", not_before_in=600),
        "wrong-issuer": world.cognito_token(iss="https://cognito-idp.eu-west-1.amazonaws.com/x"),
        "wrong-audience": world.cognito_token(aud="another-app"),
        "alg-none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(none_claims)}.",
        "unknown-kid": world.cognito_token(kid="k2", key=other_key),
        "garbage": "not-a-token",
    }


BAD = [
    "expired",
    "not-yet-valid",
    "wrong-issuer",
    "wrong-audience",
    "alg-none",
    "unknown-kid",
    "garbage",
]


def test_a_valid_cognito_token_publishes_with_its_groups(world: World) -> None:
    token = world.cognito_token(**{"cognito:groups": ["premium"]})
    with world.socket(token) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/alice"})
        assert ws.receive_json() == {"type": "subscribe_success", "id": "s"}
        ws.send_json(
            {
                "type": "publish",
                "id": "p",
                "channel": "/Inbound-Messages/alice",
                "events": [chat("claude-big")],
            }
        )
        ack = ws.receive_json()
    assert ack["type"] == "publish_success" and ack["failed"] == [], ack
    [request] = world.requests
    assert (request.principal, request.groups, request.model) == (
        "alice",
        ("premium",),
        "claude-big",
    )


@pytest.mark.parametrize("case", BAD)
def test_a_bad_token_on_the_connection_is_refused_with_connection_error(
    world: World, case: str
) -> None:
    with world.socket(bad_tokens(world)[case]) as ws:
        ws.send_json({"type": "connection_init"})
        refused = ws.receive_json()
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()  # and the socket is closed
    assert refused["type"] == "connection_error"
    [error] = refused["errors"]
    assert (error["errorType"], error["errorCode"]) == ("UnauthorizedException", 401), error
    assert refused["payload"] == {"errors": refused["errors"]}


@pytest.mark.parametrize("case", BAD)
def test_bad_tokens_are_refused_on_subscribe_and_publish(world: World, case: str) -> None:
    token = bad_tokens(world)[case]
    bad = {"Authorization": token, "host": "edge"}
    # no credential on the connection: every message brings its own
    with world.socket() as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json(
            {
                "type": "subscribe",
                "id": "s",
                "channel": "/Outbound-Messages/alice",
                "authorization": bad,
            }
        )
        sub = ws.receive_json()
        ws.send_json(
            {
                "type": "publish",
                "id": "p",
                "channel": "/Inbound-Messages/alice",
                "events": [chat()],
                "authorization": bad,
            }
        )
        pub = ws.receive_json()
        # the connection stays usable: a good token in the message's authorization works
        good = world.dev_token("alice")
        ws.send_json(
            {
                "type": "subscribe",
                "id": "s2",
                "channel": "/Outbound-Messages/alice",
                "authorization": {"Authorization": good, "host": "edge"},
            }
        )
        assert ws.receive_json() == {"type": "subscribe_success", "id": "s2"}
    assert sub["type"] == "subscribe_error" and sub["id"] == "s"
    assert pub["type"] == "publish_error" and pub["id"] == "p"
    for message in (sub, pub):
        [error] = message["errors"]
        assert (error["errorType"], error["errorCode"]) == ("UnauthorizedException", 401), error
    http = world.edge.post(
        "/event",
        headers={"Authorization": token},
        json={"channel": "/Inbound-Messages/alice", "events": [chat()]},
    )
    assert http.status_code == 401
    assert http.json()["errors"][0]["errorType"] == "UnauthorizedException"
    assert world.requests == []


def test_no_credentials_at_all(world: World) -> None:
    http = world.edge.post(
        "/event", json={"channel": "/Inbound-Messages/alice", "events": [chat()]}
    )
    assert http.status_code == 401 and world.requests == []


@pytest.mark.parametrize(
    ("kind", "channel", "error_type", "code"),
    [
        ("subscribe", "/Outbound-Messages/bob", "Unauthorized", 403),
        ("subscribe", "/Outbound-Messages/bob/chat-1", "Unauthorized", 403),
        ("subscribe", "/Outbound-Messages/*", "Unauthorized", 403),
        ("subscribe", "/Outbound-Messages/bob/*", "Unauthorized", 403),
        ("subscribe", "/Inbound-Messages/bob", "Unauthorized", 403),
        ("publish", "/Inbound-Messages/bob", "Unauthorized", 403),
        ("publish", "/Inbound-Messages/bob/chat-1", "Unauthorized", 403),
        ("publish", "/Outbound-Messages/bob", "Unauthorized", 403),
        ("publish", "/Inbound-Messages/*", "BadRequestException", 400),
        ("publish", "/Inbound-Messages/bob/*", "BadRequestException", 400),
    ],
)
def test_another_users_channel(
    world: World, kind: str, channel: str, error_type: str, code: int
) -> None:
    with world.socket(world.dev_token("alice")) as ws:
        ws.send_json({"type": "connection_init"})
        ws.receive_json()
        message: dict[str, Any] = {"type": kind, "id": "x", "channel": channel}
        if kind == "publish":
            message["events"] = [chat()]
        ws.send_json(message)
        reply = ws.receive_json()
    assert reply["type"] == f"{kind}_error", reply
    [error] = reply["errors"]
    assert (error["errorType"], error["errorCode"]) == (error_type, code)
    assert world.requests == []


def test_a_user_may_subscribe_to_the_subtree_of_their_own_channel(world: World) -> None:
    with world.socket(world.dev_token("alice")) as ws:
        ws.send_json({"type": "subscribe", "id": "mine", "channel": "/Outbound-Messages/alice/*"})
        assert ws.receive_json() == {"type": "subscribe_success", "id": "mine"}


def test_an_admin_may_subscribe_with_a_wildcard(world: World) -> None:
    with world.socket(world.dev_token("ops", "admin")) as ws:
        ws.send_json({"type": "subscribe", "id": "all", "channel": "/Outbound-Messages/*"})
        assert ws.receive_json() == {"type": "subscribe_success", "id": "all"}


def test_a_model_the_groups_do_not_allow_fails_that_event_only(world: World) -> None:
    with world.socket(world.dev_token("alice")) as ws:
        ws.send_json(
            {
                "type": "publish",
                "id": "p",
                "channel": "/Inbound-Messages/alice",
                "events": [chat("claude-big"), chat("tollgate-local"), chat()],
            }
        )
        ack = ws.receive_json()
    assert ack["type"] == "publish_success"
    [failed] = ack["failed"]
    assert (failed["index"], failed["errorCode"]) == (0, 403)
    assert "claude-big" in failed["errorMessage"]
    assert [s["index"] for s in ack["successful"]] == [1, 2]
    assert [r.model for r in world.requests] == ["tollgate-local", None]


async def _create_key(world: World, principal: str) -> tuple[str, str]:
    secret, record = await world.auth.api_keys.create(principal, ())
    return secret, record.key_id


def test_a_revoked_api_key(world: World) -> None:
    secret, key_id = world.edge.portal.call(_create_key, world, "svc")  # type: ignore[union-attr]
    body = {"channel": "/Inbound-Messages/svc", "events": [chat()]}
    ok = world.edge.post("/event", headers={"x-api-key": secret}, json=body)
    assert ok.status_code == 200 and ok.json()["failed"] == []
    world.edge.portal.call(world.keys.revoke, key_id)  # type: ignore[union-attr]
    refused = world.edge.post("/event", headers={"x-api-key": secret}, json=body)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["errorType"] == "UnauthorizedException"
    with world.socket(**{"x-api-key": secret}) as ws:
        ws.send_json({"type": "publish", "id": "p", **body})
        assert ws.receive_json()["errors"][0]["errorType"] == "UnauthorizedException"
    assert len(world.requests) == 1  # only the call made before the revocation


def test_credentials_on_the_upgrade_request_itself_are_read_too(world: World) -> None:
    # as the Swift client sends them: plain headers, no header-<b64> subprotocol
    good = world.dev_token("alice")
    with world.edge.websocket_connect(
        "/event/realtime", subprotocols=["aws-appsync-event-ws"], headers={"Authorization": good}
    ) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/alice"})
        assert ws.receive_json() == {"type": "subscribe_success", "id": "s"}
    with world.edge.websocket_connect(
        "/event/realtime",
        subprotocols=["aws-appsync-event-ws"],
        headers={"Authorization": bad_tokens(world)["expired"]},
    ) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_error"


# -- the OpenAI-compatible API: the same decisions, in OpenAI's shape -------------------------


def openai_chat(model: str = "tollgate-local") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("case", BAD)
def test_bad_tokens_are_refused_by_the_openai_api(world: World, case: str) -> None:
    headers = {"Authorization": f"Bearer {bad_tokens(world)[case]}"}
    chat_reply = world.edge.post("/v1/chat/completions", headers=headers, json=openai_chat())
    models = world.edge.get("/v1/models", headers=headers)
    for response in (chat_reply, models):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert world.requests == []


def test_the_openai_api_takes_api_keys_and_refuses_them_once_revoked(world: World) -> None:
    secret, key_id = world.edge.portal.call(_create_key, world, "svc")  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {secret}"}
    assert world.edge.get("/v1/models", headers=headers).status_code == 200
    # accepted and published; no router answers here, so the edge gives up waiting
    answered = world.edge.post("/v1/chat/completions", headers=headers, json=openai_chat())
    assert answered.status_code == 504, answered.text
    assert [r.principal for r in world.requests] == ["svc"]
    world.edge.portal.call(world.keys.revoke, key_id)  # type: ignore[union-attr]
    refused = world.edge.post("/v1/chat/completions", headers=headers, json=openai_chat())
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert len(world.requests) == 1


def test_a_model_the_groups_do_not_allow_is_a_403_on_the_openai_api(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.dev_token('alice')}"}
    refused = world.edge.post(
        "/v1/chat/completions", headers=headers, json=openai_chat("claude-big")
    )
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert world.requests == []
