"""Real Cognito-shaped RS256 tokens from moto's Cognito server (on 127.0.0.1): ID and access
tokens verify with the issuer and JWKS URL as separate settings, and the claims map."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from starlette.testclient import TestClient

from tollgate_auth.apikeys import InMemoryApiKeyStore
from tollgate_auth.app import build, create_app
from tollgate_auth.policy import InMemoryPolicyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.health import Health
from tollgate_dev.platform import free_port

REGION = "us-east-1"


@dataclass
class Pool:
    endpoint: str
    pool_id: str
    client_id: str
    tokens: dict[str, str]
    sub: str


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        idp = boto3.client(
            "cognito-idp",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        pool_id = idp.create_user_pool(PoolName="tollgate")["UserPool"]["Id"]
        client_id = idp.create_user_pool_client(UserPoolId=pool_id, ClientName="web")[
            "UserPoolClient"
        ]["ClientId"]
        idp.create_group(UserPoolId=pool_id, GroupName="premium")
        idp.admin_create_user(UserPoolId=pool_id, Username="alice", TemporaryPassword="Tmp-pass-1")
        idp.admin_set_user_password(
            UserPoolId=pool_id, Username="alice", Password="Real-pass-1", Permanent=True
        )
        idp.admin_add_user_to_group(UserPoolId=pool_id, Username="alice", GroupName="premium")
        sub = next(
            a["Value"]
            for a in idp.admin_get_user(UserPoolId=pool_id, Username="alice")["UserAttributes"]
            if a["Name"] == "sub"
        )
        result = idp.admin_initiate_auth(
            UserPoolId=pool_id,
            ClientId=client_id,
            AuthFlow="ADMIN_USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": "alice", "PASSWORD": "Real-pass-1"},
        )["AuthenticationResult"]
        yield Pool(
            endpoint,
            pool_id,
            client_id,
            {"id": result["IdToken"], "access": result["AccessToken"]},
            sub,
        )
    finally:
        server.stop()


def _client(pool: Pool, **overrides: Any) -> TestClient:
    settings = AuthSettings(
        **{
            "issuer": f"https://cognito-idp.{REGION}.amazonaws.com/{pool.pool_id}",
            "jwks_url": f"{pool.endpoint}/{pool.pool_id}/.well-known/jwks.json",
            "audiences": pool.client_id,
            **overrides,
        }
    )
    components = build(
        settings,
        key_store=InMemoryApiKeyStore(),
        policy_store=InMemoryPolicyStore(),
        publisher=InMemoryPublisher(),
        http=httpx.AsyncClient(timeout=5),
    )
    return TestClient(create_app(components, Health()))


@pytest.mark.parametrize("kind", ["id", "access"])
def test_cognito_tokens_verify_and_map_claims(pool: Pool, kind: str) -> None:
    with _client(pool) as client:
        response = client.post(
            "/v1/authorize",
            json={
                "headers": {"Authorization": pool.tokens[kind]},
                "operation": "subscribe",
                "channel": f"/Outbound-Messages/{pool.sub}",
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["principal"], body["groups"], body["username"]) == (pool.sub, ["premium"], "alice")


def test_another_users_channel_is_refused_for_a_cognito_user(pool: Pool) -> None:
    with _client(pool) as client:
        response = client.post(
            "/v1/authorize",
            json={
                "headers": {"Authorization": pool.tokens["id"]},
                "operation": "subscribe",
                "channel": "/Outbound-Messages/alice",  # the username, not the sub
            },
        )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "channel_denied"


@pytest.mark.parametrize(
    ("overrides", "error_type"),
    [
        ({"audiences": "another-client"}, "invalid_token"),
        ({"issuer": "https://cognito-idp.eu-west-1.amazonaws.com/other"}, "invalid_token"),
        ({"token_uses": "id"}, "invalid_token"),  # the access token is then refused
    ],
)
def test_cognito_tokens_are_refused_on_mismatched_settings(
    pool: Pool, overrides: dict[str, str], error_type: str
) -> None:
    with _client(pool, **overrides) as client:
        response = client.post(
            "/v1/authorize",
            json={"headers": {"Authorization": pool.tokens["access"]}, "operation": "invoke"},
        )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == error_type


def test_an_unreachable_jwks_is_a_503_not_an_allow(pool: Pool) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    with _client(pool, jwks_url=dead) as client:
        response = client.post(
            "/v1/authorize",
            json={"headers": {"Authorization": pool.tokens["id"]}, "operation": "invoke"},
        )
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"
