"""The usage and admin API, in-process, with a fake identity resolver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette

from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.errors import TollgateError
from tollgate_meter.adapters.postgres import PostgresLedger
from tollgate_meter.api import AuthServiceIdentity, Caller, Unauthenticated, UsageApi
from tollgate_meter.domain import Estimate

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class FakeIdentity:
    async def resolve(self, headers: dict[str, str]) -> Caller:
        token = headers.get("authorization", "")
        if token == "alice-token":
            return Caller("alice", (), admin=False)
        if token == "root-token":
            return Caller("root", ("admin",), admin=True)
        raise Unauthenticated("who are you?")


@pytest.fixture
async def client(ledger: PostgresLedger) -> AsyncIterator[httpx.AsyncClient]:
    api = UsageApi(ledger, FakeIdentity(), lambda: NOW, admin_token="s3cret")
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://meter") as client:
        yield client


async def test_me_shows_each_window(ledger: PostgresLedger, client: httpx.AsyncClient) -> None:
    await ledger.admit("r1", "alice", "m", (), Estimate(10, 100), NOW)
    body = (await client.get("/v1/usage/me", headers={"authorization": "alice-token"})).json()
    assert body["principal"] == "alice" and body["tier"] == "standard"
    ten = body["windows"][0]
    assert ten["name"] == "rolling-10m" and ten["kind"] == "trailing" and ten["seconds"] == 600
    assert ten["limit"]["output"] == 1_000
    assert ten["reserved"] == {"input": 10, "output": 100, "total": 110}
    assert ten["remaining"]["output"] == 900 and ten["remaining"]["input"] is None
    assert ten["resets_at"] == "2026-11-22T12:20:00+00:00"  # bucket end + 10 min
    assert body["windows"][2]["resets_at"] == "2026-12-01T00:00:00+00:00"


async def status(
    client: httpx.AsyncClient, method: str, url: str, token: str | None = None, **kwargs: object
) -> int:
    headers = {"authorization": token} if token else {}
    return (await client.request(method, url, headers=headers, **kwargs)).status_code  # type: ignore[arg-type]


async def test_authentication_and_admin_rights(client: httpx.AsyncClient) -> None:
    assert await status(client, "GET", "/v1/usage/me") == 401
    assert await status(client, "GET", "/v1/usage/alice", "alice-token") == 403
    assert await status(client, "GET", "/v1/usage/alice", "root-token") == 200
    assert await status(client, "GET", "/v1/admin/tiers", "Bearer s3cret") == 200


async def test_admin_sets_tiers_and_principal_limits(client: httpx.AsyncClient) -> None:
    admin = "Bearer s3cret"
    gold = {
        "rank": 20,
        "windows": [{"name": "daily", "kind": "trailing", "seconds": 86400, "output": 99}],
    }
    assert await status(client, "PUT", "/v1/admin/tiers/gold", admin, json=gold) == 200
    tiers = await client.get("/v1/admin/tiers", headers={"authorization": admin})
    assert tiers.json()["gold"] == gold
    assert (
        await status(client, "PUT", "/v1/admin/principals/alice", admin, json={"tier": "gold"})
        == 200
    )
    me = (await client.get("/v1/usage/me", headers={"authorization": "alice-token"})).json()
    assert me["tier"] == "gold" and me["windows"][0]["limit"]["output"] == 99
    bad = await client.put(
        "/v1/admin/tiers/x",
        json={"windows": [{"name": "w", "kind": "trailing"}]},
        headers={"authorization": admin},
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "validation_error"
    assert await status(client, "DELETE", "/v1/admin/tiers/gold", admin) == 204
    assert await status(client, "DELETE", "/v1/admin/tiers/gold", admin) == 404


def test_errors_are_typed() -> None:
    assert issubclass(Unauthenticated, TollgateError) and Unauthenticated.http_status == 401


async def test_a_non_ascii_bearer_is_refused_not_a_crash(ledger: PostgresLedger) -> None:
    api = UsageApi(ledger, FakeIdentity(), lambda: NOW, admin_token="s3cret")
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://meter") as client:
        response = await client.get(
            "/v1/admin/tiers", headers={"authorization": "Bearer s3cr\u00e9t".encode()}
        )
    assert response.status_code == 401
    unicode_token = UsageApi(ledger, FakeIdentity(), lambda: NOW, admin_token="s\u00e9cret")
    transport = httpx.ASGITransport(app=Starlette(routes=unicode_token.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://meter") as client:
        response = await client.get("/v1/admin/tiers", headers={"authorization": "Bearer x"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (400, b'{"error":{"type":"validation_error","message":"bad"}}', 401),
        (401, b"not json", 503),
        (200, b'{"groups": []}', 503),
    ],
)
async def test_the_meter_reads_auth_decisions_like_the_edge(
    ledger: PostgresLedger, status: int, raw: bytes, expected: int
) -> None:
    auth = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(status, content=raw))
    )
    api = UsageApi(ledger, AuthServiceIdentity(auth, "http://auth"), lambda: NOW, admin_token=None)
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://meter") as client:
        response = await client.get("/v1/usage/me", headers={"x-api-key": "tg_x"})
    assert response.status_code == expected


def settled_usage(request_id: str, principal: str, inp: int, out: int) -> UsageRecordV1:
    return UsageRecordV1(
        request_id=request_id,
        principal=principal,
        model="m",
        provider="local",
        usage=Usage(input_tokens=inp, output_tokens=out),
        cost_usd=Decimal("0.5"),
    )


async def test_the_admin_overview_sums_settled_usage_per_principal_and_model(
    ledger: PostgresLedger, client: httpx.AsyncClient
) -> None:
    for request_id, principal, inp, out in [
        ("o1", "ov-a", 3, 7),
        ("o2", "ov-a", 1, 2),
        ("o3", "ov-b", 5, 5),
    ]:
        await ledger.admit(request_id, principal, "m", (), Estimate(10, 100), NOW)
        await ledger.settle(settled_usage(request_id, principal, inp, out), NOW)
    await ledger.admit("o4", "ov-b", "m", (), Estimate(10, 100), NOW)  # open: not counted
    assert await status(client, "GET", "/v1/admin/usage", "alice-token") == 403
    assert await status(client, "GET", "/v1/admin/usage?top=lots", "root-token") == 400
    body = (await client.get("/v1/admin/usage", headers={"authorization": "root-token"})).json()
    assert body["day"] == "2026-11-22" and body["month"] == "2026-11-01"
    rows = {p["principal"]: p for p in body["principals"] if p["principal"].startswith("ov-")}
    assert (
        rows["ov-a"]["today"]
        == rows["ov-a"]["month"]
        == {
            "requests": 2,
            "input_tokens": 4,
            "output_tokens": 9,
            "total_tokens": 13,
            "cost_usd": "1.00000000",
        }
    )
    assert rows["ov-b"]["month"]["total_tokens"] == 10 and rows["ov-b"]["month"]["requests"] == 1
    [model] = [m for m in body["models"] if m["model"] == "m"]
    assert model["total_tokens"] >= 23


async def test_a_report_waits_for_a_requests_settlement(
    ledger: PostgresLedger, client: httpx.AsyncClient
) -> None:
    admin = {"authorization": "root-token"}
    await ledger.admit("w1", "wait-a", "m", (), Estimate(10, 100), NOW)
    pending = await client.get("/v1/usage/wait-a?settled=w1&wait_s=0.2", headers=admin)
    assert pending.json()["settled"] is False
    assert pending.json()["windows"][0]["reserved"]["output"] == 100
    # someone else's request never counts as this principal's settlement
    other = await client.get("/v1/usage/wait-b?settled=w1&wait_s=0", headers=admin)
    assert other.json()["settled"] is False
    await ledger.settle(settled_usage("w1", "wait-a", 4, 6), NOW)
    done = (await client.get("/v1/usage/wait-a?settled=w1", headers=admin)).json()
    assert done["settled"] is True
    assert (
        done["windows"][0]["used"]["output"] == 6 and done["windows"][0]["reserved"]["output"] == 0
    )
    for bad in ("-1", "6", "soon"):
        assert (
            await status(client, "GET", f"/v1/usage/wait-a?settled=w1&wait_s={bad}", "root-token")
            == 400
        )
