"""The one client of ``POST /v1/authorize``: grants, typed denials, and anything else an
outage (never an allow, never the caller's fault)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tollgate_core.authorize import AuthorizeClient, Denial, Grant
from tollgate_core.errors import DependencyUnavailable


def client(status: int, body: Any = None, *, raw: bytes | None = None) -> AuthorizeClient:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/authorize"
        if raw is not None:
            return httpx.Response(status, content=raw)
        return httpx.Response(status, json=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://auth")
    return AuthorizeClient(http)


async def test_a_grant_carries_groups_models_tier_and_expiry() -> None:
    decision = await client(
        200,
        {
            "principal": "alice",
            "groups": ["research"],
            "models": ["m1"],
            "tier": "premium",
            "admin": False,
            "expires_at": 1.5e9,
        },
    ).decide({"x-api-key": "tg_x", "cookie": "no"}, "invoke")
    assert decision == Grant("alice", ("research",), frozenset({"m1"}), "premium", False, 1.5e9)


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_denials_are_typed(status: int) -> None:
    decision = await client(
        status, {"error": {"type": "invalid_api_key", "message": "revoked"}}
    ).decide({"x-api-key": "tg_x"}, "invoke")
    assert decision == Denial(status, "invalid_api_key", "revoked")


@pytest.mark.parametrize(
    ("status", "body", "raw"),
    [
        (500, {"error": {"type": "x", "message": "y"}}, None),
        (503, None, b"<html>down</html>"),
        (401, None, b"not json"),
        (200, {"groups": []}, None),
        (200, ["not", "an", "object"], None),
        (200, {"principal": "a", "groups": 7}, None),
    ],
)
async def test_anything_else_is_an_outage(status: int, body: Any, raw: bytes | None) -> None:
    with pytest.raises(DependencyUnavailable):
        await client(status, body, raw=raw).decide({"authorization": "t"}, "invoke")


async def test_an_unreachable_auth_service_is_an_outage() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    http = httpx.AsyncClient(transport=httpx.MockTransport(down), base_url="http://auth")
    with pytest.raises(DependencyUnavailable):
        await AuthorizeClient(http).decide({"authorization": "t"}, "invoke")
