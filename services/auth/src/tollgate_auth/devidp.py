"""The development identity provider: real RS256 tokens shaped like Cognito's, from a key made
at start-up. It exists for local use and tests and is off unless ``TOLLGATE_AUTH_DEV_IDP``."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class DevIdentityProvider:
    def __init__(self, *, issuer: str, audience: str, ttl_s: int) -> None:
        self.issuer = issuer
        self.audience = audience
        self._ttl_s = ttl_s
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"dev-{uuid.uuid4().hex[:12]}"

    def jwks(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        public.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [public]}

    def issue(
        self,
        sub: str,
        groups: tuple[str, ...] = (),
        *,
        expires_in: int | None = None,
        not_before_in: int = 0,
    ) -> dict[str, str]:
        """An ID token and an access token for ``sub``; ``expires_in`` and ``not_before_in``
        (seconds from now, may be negative) let tests make tokens that are not valid now."""
        now = int(time.time())
        common: dict[str, Any] = {
            "sub": sub,
            "iss": self.issuer,
            "iat": now,
            "nbf": now + not_before_in,
            "exp": now + (self._ttl_s if expires_in is None else expires_in),
            "cognito:groups": list(groups),
        }
        id_claims = {**common, "aud": self.audience, "token_use": "id", "cognito:username": sub}
        access_claims = {
            **common,
            "client_id": self.audience,
            "token_use": "access",
            "username": sub,
            "scope": "openid",
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.kid}
        return {
            "id_token": jwt.encode(id_claims, self._key, algorithm="RS256", headers=headers),
            "access_token": jwt.encode(
                access_claims, self._key, algorithm="RS256", headers=headers
            ),
        }
