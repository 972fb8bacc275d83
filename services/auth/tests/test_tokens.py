"""Token verification through the decision endpoint: what verifies, and every way a token is
refused (each a 401 with a typed error, each audited as a denial)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from tollgate_core import topics
from tollgate_core.contracts import AuditEventV1

ISS = "https://idp.example/pool"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _audits(auth: Any) -> list[AuditEventV1]:
    return [e for e in auth.publisher.on(topics.AUDIT) if isinstance(e, AuditEventV1)]


def test_dev_idp_tokens_verify_and_map_cognito_claims(auth: Any) -> None:
    tokens = auth.client.post("/v1/dev/token", json={"sub": "alice", "groups": ["premium"]}).json()
    for token in (tokens["id_token"], tokens["access_token"]):
        response = auth.authorize({"Authorization": token}, "publish", "/Inbound-Messages/alice")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["principal"], body["groups"], body["username"]) == (
            "alice",
            ["premium"],
            "alice",
        )
        assert (body["tier"], body["models"], body["credential"]) == (
            "premium",
            ["*", "tollgate-local"],
            "jwt",
        )
    [jwk] = auth.client.get("/.well-known/jwks.json").json()["keys"]
    assert jwt.get_unverified_header(tokens["id_token"]) == {
        "alg": "RS256",
        "typ": "JWT",
        "kid": jwk["kid"],
    }
    assert "d" not in jwk  # the public half only
    assert [a.outcome for a in _audits(auth)] == ["allow", "allow"]


def test_an_external_issuer_verifies_through_its_jwks_url(auth: Any, forger: Any) -> None:
    token = forger.token(iss=ISS, aud="client-1", token_use="id", **{"cognito:groups": ["g"]})
    response = auth.authorize(
        {"authorization": f"Bearer {token}"}, "subscribe", "/Outbound-Messages/alice"
    )
    assert response.status_code == 200, response.text
    assert response.json()["groups"] == ["g"]
    assert auth.jwks_calls == ["https://keys.example/pool/jwks.json"]
    # cached: a second token needs no second fetch
    auth.authorize({"authorization": token}, "subscribe", "/Outbound-Messages/alice")
    assert len(auth.jwks_calls) == 1


def test_access_tokens_match_the_audience_by_client_id(auth: Any, forger: Any) -> None:
    token = forger.token(iss=ISS, client_id="client-1", token_use="access")
    assert auth.authorize({"authorization": token}, "invoke").status_code == 200


def _refused(auth: Any, token: str, error_type: str) -> None:
    response = auth.authorize({"authorization": token}, "publish", "/Inbound-Messages/alice")
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == error_type
    [audit] = _audits(auth)
    assert (audit.outcome, audit.reason, audit.principal) == ("deny", error_type, None)


def test_expired_token(auth: Any) -> None:
    _refused(auth, auth.token("alice", expires_in=-120), "token_expired")


def test_expired_within_leeway_still_passes(auth: Any) -> None:
    token = auth.token("alice", expires_in=-5)
    assert auth.authorize({"authorization": token}, "invoke").status_code == 200


def test_not_yet_valid_token(auth: Any) -> None:
    _refused(auth, auth.token("alice", not_before_in=600, expires_in=1200), "token_expired")


def test_wrong_issuer(auth: Any, forger: Any) -> None:
    _refused(auth, forger.token(iss="https://evil.example", aud="client-1"), "invalid_token")


def test_wrong_audience(auth: Any, forger: Any) -> None:
    _refused(auth, forger.token(iss=ISS, aud="someone-else"), "invalid_token")


def test_wrong_token_use(auth: Any, forger: Any) -> None:
    _refused(auth, forger.token(iss=ISS, aud="client-1", token_use="refresh"), "invalid_token")


def test_alg_none(auth: Any) -> None:
    now = int(time.time())
    claims = {"sub": "alice", "iss": "tollgate-dev-idp", "aud": "tollgate-dev", "exp": now + 600}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    _refused(auth, token, "invalid_token")


def test_hs256_signed_with_the_public_key_is_refused(auth: Any) -> None:
    jwk = auth.client.get("/.well-known/jwks.json").json()["keys"][0]
    now = int(time.time())
    claims = {"sub": "alice", "iss": "tollgate-dev-idp", "aud": "tollgate-dev", "exp": now + 600}
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]})
    signing_input = f"{header}.{_b64(claims)}"
    sig = hmac.new(json.dumps(jwk).encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"
    _refused(auth, token, "invalid_token")


def test_unknown_kid_refetches_once_then_refuses(auth: Any, forger: Any) -> None:
    served = forger.jwks()
    forger.jwks = lambda: served  # the issuer keeps serving the old kid
    forger.kid = "rotated-away"
    _refused(auth, forger.token(iss=ISS, aud="client-1"), "invalid_token")
    assert len(auth.jwks_calls) == 1


def test_a_token_signed_by_another_key_with_the_dev_kid(auth: Any, forger: Any) -> None:
    jwk = auth.client.get("/.well-known/jwks.json").json()["keys"][0]
    forger.kid = jwk["kid"]
    _refused(auth, forger.token(iss="tollgate-dev-idp", aud="tollgate-dev"), "invalid_token")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "Bearer "])
def test_garbage_credentials(auth: Any, token: str) -> None:
    response = auth.authorize({"authorization": token}, "invoke")
    assert response.status_code == 401
    assert response.json()["error"]["type"] in ("invalid_token", "unauthenticated")


def test_no_credentials(auth: Any) -> None:
    response = auth.authorize({}, "invoke")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthenticated"


def test_key_rotation_is_picked_up_by_refetching_on_an_unknown_kid(auth: Any, forger: Any) -> None:
    first = forger.token(iss=ISS, aud="client-1")
    assert auth.authorize({"authorization": first}, "invoke").status_code == 200
    from cryptography.hazmat.primitives.asymmetric import rsa

    forger.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forger.kid = "next"
    second = forger.token(iss=ISS, aud="client-1")
    assert auth.authorize({"authorization": second}, "invoke").status_code == 200
    assert len(auth.jwks_calls) == 2


def test_es256_tokens_from_an_oidc_issuer_verify(auth: Any, forger: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key())) | {"kid": "ec-1", "alg": "ES256"}
    forger.jwks = lambda: {"keys": [jwk]}
    now = int(time.time())
    claims = {"sub": "erin", "iss": ISS, "aud": "client-1", "exp": now + 60, "groups": ["g"]}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "ec-1"})
    response = auth.authorize({"authorization": token}, "invoke")
    assert response.status_code == 200, response.text
    assert (response.json()["principal"], response.json()["groups"]) == ("erin", ["g"])
    # the same key presented as RS256 is refused: the key's algorithm is pinned too
    forged = f"{_b64({'alg': 'RS256', 'kid': 'ec-1'})}.{token.split('.', 1)[1]}"
    assert auth.authorize({"authorization": forged}, "invoke").status_code == 401
