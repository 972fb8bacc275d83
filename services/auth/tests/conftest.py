"""Fixtures for the auth service: its app in-process with in-memory stores, a dev IdP, and
signing keys of our own to forge tokens with."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr
from starlette.testclient import TestClient

from tollgate_auth.apikeys import InMemoryApiKeyStore
from tollgate_auth.app import AuthComponents, build, create_app
from tollgate_auth.policy import InMemoryPolicyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.health import Health

POLICY = """
admin_groups = ["admin"]
[default]
models = ["tollgate-local"]
tier = "standard"
[groups.premium]
models = ["*"]
tier = "premium"
rank = 10
[groups.admin]
models = ["*"]
tier = "admin"
rank = 100
"""


class Forger:
    """A key pair of our own, to make tokens the service must refuse."""

    def __init__(self, kid: str = "forged") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256"})
        return {"keys": [jwk]}

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "alice", "iat": now, "exp": now + 600, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


class AuthUnderTest:
    def __init__(self, settings: AuthSettings, external_jwks: httpx.MockTransport | None) -> None:
        self.publisher = InMemoryPublisher()
        self.keys = InMemoryApiKeyStore()
        self.http = httpx.AsyncClient(transport=external_jwks or httpx.MockTransport(_no_net))
        self.components: AuthComponents = build(
            settings,
            key_store=self.keys,
            policy_store=InMemoryPolicyStore(),
            publisher=self.publisher,
            http=self.http,
        )
        health = Health()
        self.client = TestClient(create_app(self.components, health))

    def token(self, sub: str, *groups: str, **extra: Any) -> str:
        response = self.client.post("/v1/dev/token", json={"sub": sub, "groups": groups, **extra})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def authorize(
        self,
        headers: dict[str, str],
        operation: str,
        channel: str | None = None,
        model: str | None = None,
    ) -> httpx.Response:
        return self.client.post(
            "/v1/authorize",
            json={"headers": headers, "operation": operation, "channel": channel, "model": model},
        )


def _no_net(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request to {request.url}")


@pytest.fixture
def forger() -> Forger:
    return Forger()


@pytest.fixture
def auth(tmp_path: Any, forger: Forger) -> Iterator[AuthUnderTest]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    calls: list[str] = []

    def jwks(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json=forger.jwks())

    settings = AuthSettings(
        dev_idp=True,
        policy_file=policy,
        issuer="https://idp.example/pool",
        jwks_url="https://keys.example/pool/jwks.json",
        audiences="client-1",
        jwks_min_refresh_s=0,
        admin_token=SecretStr("bootstrap-admin-secret"),
    )
    under_test = AuthUnderTest(settings, httpx.MockTransport(jwks))
    under_test.jwks_calls = calls  # type: ignore[attr-defined]
    with under_test.client:
        yield under_test
