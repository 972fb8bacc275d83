"""The meter's HTTP API: a caller's own usage, and the admin API for tiers and per-principal
limits. Callers are identified by the auth service (the same credentials as the edge)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_core.authorize import CREDENTIAL_HEADERS, AuthorizeClient, Denial
from tollgate_core.errors import Forbidden, RequestError, TollgateError, Unauthenticated
from tollgate_core.http import bearer_matches, error_response, parse_body
from tollgate_meter.limits import DIMENSIONS, TierSpec, WindowSpec, WindowUsage
from tollgate_meter.ports import UsageApiLedger, UsageReport


@dataclass(frozen=True, slots=True)
class Caller:
    principal: str
    groups: tuple[str, ...]
    admin: bool


class IdentityResolver(Protocol):
    async def resolve(self, headers: dict[str, str]) -> Caller: ...


class AuthServiceIdentity:
    """Asks the auth service who holds these credentials (operation ``invoke``)."""

    def __init__(self, client: httpx.AsyncClient, auth_url: str) -> None:
        self._decisions = AuthorizeClient(client, auth_url)

    async def resolve(self, headers: dict[str, str]) -> Caller:
        if not any(k in headers for k in CREDENTIAL_HEADERS):
            raise Unauthenticated("send a token in Authorization or an API key in x-api-key")
        decision = await self._decisions.decide(headers, "invoke")  # outage: 503
        if isinstance(decision, Denial):
            raise Unauthenticated(decision.message)
        return Caller(decision.principal, decision.groups, decision.admin)


#: how often a report waiting for a request's settlement looks again
SETTLE_POLL_S = 0.05


def _wait_seconds(raw: str, *, field: str = "wait_s", most: float = 5.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise RequestError(f"{field} must be a number from 0 to {most:g}", details={"field": field})
    return value


class PrincipalLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: str | None = None
    windows: tuple[WindowSpec, ...] | None = None


def _totals(usage: WindowUsage) -> dict[str, Any]:
    used, reserved, counted = usage.used, usage.reserved, usage.counted
    limits = {d: usage.spec.limit(d) for d in DIMENSIONS}
    remaining = {
        d: None if limits[d] is None else max(0, limits[d] - counted.get(d))  # type: ignore[operator]
        for d in DIMENSIONS
    }
    return {
        "name": usage.spec.name,
        "kind": usage.spec.kind,
        "seconds": usage.spec.seconds,
        "limit": limits,
        "used": {
            "input": used.input,
            "output": used.output,
            "total": used.total,
            "requests": used.requests,
        },
        "reserved": {"input": reserved.input, "output": reserved.output, "total": reserved.total},
        "remaining": remaining,
        "resets_at": usage.resets_at.isoformat() if usage.resets_at else None,
    }


def report_json(report: UsageReport) -> dict[str, Any]:
    return {
        "principal": report.principal,
        "tier": report.tier,
        "windows": [_totals(w) for w in report.windows],
        "month_by_model": report.by_model,
    }


class UsageApi:
    def __init__(
        self,
        ledger: UsageApiLedger,
        identity: IdentityResolver,
        clock: Callable[[], datetime],
        *,
        admin_token: str | None,
    ) -> None:
        self._ledger = ledger
        self._identity = identity
        self._clock = clock
        self._admin_token = admin_token

    async def _caller(self, request: Request) -> Caller:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if bearer_matches(headers.get("authorization"), self._admin_token):
            return Caller("admin-token", (), admin=True)
        return await self._identity.resolve(headers)

    async def _admin(self, request: Request) -> Caller:
        caller = await self._caller(request)
        if not caller.admin:
            raise Forbidden("this needs an admin")
        return caller

    def routes(self) -> list[BaseRoute]:
        def handle(
            fn: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await fn(request)
                except TollgateError as exc:
                    return error_response(exc)

            return endpoint

        return [
            Route("/v1/usage/me", handle(self.me), methods=["GET"]),
            Route("/v1/usage/{principal}", handle(self.of_principal), methods=["GET"]),
            Route("/v1/admin/usage", handle(self.overview), methods=["GET"]),
            Route("/v1/admin/tiers", handle(self.list_tiers), methods=["GET"]),
            Route("/v1/admin/tiers/{name}", handle(self.put_tier), methods=["PUT"]),
            Route("/v1/admin/tiers/{name}", handle(self.delete_tier), methods=["DELETE"]),
            Route("/v1/admin/principals/{principal}", handle(self.get_principal), methods=["GET"]),
            Route("/v1/admin/principals/{principal}", handle(self.put_principal), methods=["PUT"]),
        ]

    async def me(self, request: Request) -> Response:
        caller = await self._caller(request)
        report = await self._ledger.report(caller.principal, caller.groups, self._clock())
        return JSONResponse(report_json(report))

    async def of_principal(self, request: Request) -> Response:
        """An admin's view of one principal's windows. ``settled=<request id>`` first waits
        (at most ``wait_s``, ≤ 5 s) until that request of the principal is settled or
        released, so the report counts its real tokens and no longer its reservation; the
        answer's ``settled`` says whether it was."""
        await self._admin(request)
        query = request.query_params
        groups = tuple(g for g in query.get("groups", "").split(",") if g)
        principal = request.path_params["principal"]
        settled: bool | None = None
        if "settled" in query:
            wait_s = _wait_seconds(query.get("wait_s", "2"))
            settled = await self._await_settled(query["settled"], principal, wait_s)
        report = await self._ledger.report(principal, groups, self._clock())
        body = report_json(report)
        if settled is not None:
            body["settled"] = settled
        return JSONResponse(body)

    async def _await_settled(self, request_id: str, principal: str, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            reservation = await self._ledger.get(request_id)
            if (
                reservation is not None
                and reservation.principal == principal
                and reservation.status != "reserved"
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(SETTLE_POLL_S)

    async def overview(self, request: Request) -> Response:
        await self._admin(request)
        top = _wait_seconds(request.query_params.get("top", "20"), field="top", most=100)
        return JSONResponse(await self._ledger.overview(self._clock(), int(top)))

    async def list_tiers(self, request: Request) -> Response:
        await self._admin(request)
        tiers = await self._ledger.tiers()
        return JSONResponse(
            {
                name: json.loads(t.model_dump_json(exclude_none=True))
                for name, t in sorted(tiers.items())
            }
        )

    async def put_tier(self, request: Request) -> Response:
        await self._admin(request)
        spec = await parse_body(request, TierSpec)
        await self._ledger.set_tier(request.path_params["name"], spec)
        return JSONResponse(json.loads(spec.model_dump_json(exclude_none=True)))

    async def delete_tier(self, request: Request) -> Response:
        await self._admin(request)
        found = await self._ledger.delete_tier(request.path_params["name"])
        return Response(status_code=204 if found else 404)

    async def get_principal(self, request: Request) -> Response:
        await self._admin(request)
        limits = await self._ledger.principal_limits(request.path_params["principal"])
        return JSONResponse(limits or {"tier": None, "windows": None})

    async def put_principal(self, request: Request) -> Response:
        await self._admin(request)
        body = await parse_body(request, PrincipalLimits)
        await self._ledger.set_principal(request.path_params["principal"], body.tier, body.windows)
        return JSONResponse(json.loads(body.model_dump_json()))
