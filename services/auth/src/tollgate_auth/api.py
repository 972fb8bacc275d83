"""The auth service's HTTP API: the decision endpoint the edge calls, the admin API for keys
and group policy, and (when enabled) the development IdP."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_auth.apikeys import ApiKeys
from tollgate_auth.devidp import DevIdentityProvider
from tollgate_auth.domain import GroupPolicy
from tollgate_auth.policy import GroupPolicyModel, Policy
from tollgate_auth.service import Audit, Authorizer
from tollgate_core.contracts import AuditEventV1, utcnow
from tollgate_core.errors import NotFound, RequestError, TollgateError
from tollgate_core.http import error_response, parse_body

_NAME = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")


class AuthorizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    headers: dict[str, str] = Field(default_factory=dict)
    operation: Literal["publish", "subscribe", "invoke"]
    channel: str | None = Field(default=None, max_length=1024)
    model: str | None = Field(default=None, max_length=256)


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sub: str = Field(pattern=_NAME.pattern)
    groups: tuple[str, ...] = ()
    expires_in: int | None = None
    not_before_in: int = 0


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal: str = Field(pattern=_NAME.pattern)
    groups: tuple[str, ...] = ()
    name: str = Field(default="", max_length=200)
    expires_at: datetime | None = None
    expires_in: int | None = Field(default=None, gt=0)

    def expiry(self) -> datetime | None:
        if self.expires_in is not None:
            return utcnow() + timedelta(seconds=self.expires_in)
        return self.expires_at


class Api:
    def __init__(
        self,
        authorizer: Authorizer,
        api_keys: ApiKeys,
        policy: Policy,
        audit: Audit,
        dev_idp: DevIdentityProvider | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._keys = api_keys
        self._policy = policy
        self._audit = audit
        self._dev_idp = dev_idp

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/v1/authorize", self._guard(self.authorize), methods=["POST"]),
            Route("/v1/admin/api-keys", self._guard(self.list_keys), methods=["GET"]),
            Route("/v1/admin/api-keys", self._guard(self.create_key), methods=["POST"]),
            Route("/v1/admin/api-keys/{key_id}", self._guard(self.revoke_key), methods=["DELETE"]),
            Route("/v1/admin/groups", self._guard(self.list_groups), methods=["GET"]),
            Route("/v1/admin/groups/{group}", self._guard(self.put_group), methods=["PUT"]),
            Route("/v1/admin/groups/{group}", self._guard(self.delete_group), methods=["DELETE"]),
        ]
        if self._dev_idp is not None:
            routes += [
                Route("/v1/dev/token", self._guard(self.dev_token), methods=["POST"]),
                Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
            ]
        return routes

    @staticmethod
    def _guard(handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except TollgateError as exc:
                return error_response(exc)
            return response

        return guarded

    # --- decisions -----------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        body: AuthorizeRequest = await parse_body(request, AuthorizeRequest)
        decision = await self._authorizer.authorize(
            body.headers, operation=body.operation, channel=body.channel, model=body.model
        )
        principal, grants = decision.principal, decision.grants
        return JSONResponse(
            {
                "principal": principal.sub,
                "groups": list(principal.groups),
                "username": principal.username,
                "credential": principal.credential,
                "models": sorted(grants.models),
                "tier": grants.tier,
                "admin": grants.admin,
                "expires_at": principal.expires_at,
            }
        )

    # --- admin ---------------------------------------------------------------------------

    async def _admin_event(self, request: Request, action: str, subject: str) -> AuditEventV1:
        actor = await self._authorizer.admin(dict(request.headers))
        return AuditEventV1(
            action=action,
            outcome="allow",
            principal=actor.sub,
            groups=actor.groups,
            credential=actor.credential,
            subject=subject,
        )

    async def list_keys(self, request: Request) -> Response:
        await self._authorizer.admin(dict(request.headers))
        principal = request.query_params.get("principal")
        keys = await self._keys.store.list(principal)
        return JSONResponse({"keys": [k.public() for k in keys]})

    async def create_key(self, request: Request) -> Response:
        await self._authorizer.admin(dict(request.headers))
        body: CreateKeyRequest = await parse_body(request, CreateKeyRequest)
        secret, record = await self._keys.create(
            body.principal, body.groups, name=body.name, expires_at=body.expiry()
        )
        event = await self._admin_event(request, "api_key.create", record.key_id)
        await self._audit.record(event)
        return JSONResponse({"key": secret, **record.public()}, status_code=201)

    async def revoke_key(self, request: Request) -> Response:
        event = await self._admin_event(request, "api_key.revoke", request.path_params["key_id"])
        if not await self._keys.store.revoke(request.path_params["key_id"]):
            raise NotFound("no such active API key")
        await self._audit.record(event)
        return JSONResponse({"revoked": request.path_params["key_id"]})

    async def list_groups(self, request: Request) -> Response:
        await self._authorizer.admin(dict(request.headers))
        groups = await self._policy.groups()
        return JSONResponse(
            {
                "admin_groups": sorted(self._policy.admin_groups),
                "default": _policy_json(self._policy.base.default.to_domain()),
                "groups": {name: _policy_json(p) for name, p in sorted(groups.items())},
            }
        )

    async def put_group(self, request: Request) -> Response:
        group = request.path_params["group"]
        if not _NAME.match(group):
            raise RequestError("group names are 1-128 of [A-Za-z0-9._:@+-]")
        event = await self._admin_event(request, "policy.update", group)
        body: GroupPolicyModel = await parse_body(request, GroupPolicyModel)
        await self._policy.store.put(group, body.to_domain())
        await self._audit.record(event)
        return JSONResponse({group: _policy_json(body.to_domain())})

    async def delete_group(self, request: Request) -> Response:
        group = request.path_params["group"]
        event = await self._admin_event(request, "policy.delete", group)
        if not await self._policy.store.delete(group):
            raise NotFound("no run-time policy for that group")
        await self._audit.record(event)
        return JSONResponse({"deleted": group})

    # --- development IdP -----------------------------------------------------------------

    async def dev_token(self, request: Request) -> Response:
        if self._dev_idp is None:  # pragma: no cover - the route is not mounted then
            raise NotFound("the development IdP is off")
        body: DevTokenRequest = await parse_body(request, DevTokenRequest)
        tokens = self._dev_idp.issue(
            body.sub, body.groups, expires_in=body.expires_in, not_before_in=body.not_before_in
        )
        return JSONResponse(tokens)

    async def jwks(self, request: Request) -> Response:
        if self._dev_idp is None:  # pragma: no cover - the route is not mounted then
            raise NotFound("the development IdP is off")
        return Response(json.dumps(self._dev_idp.jwks()), media_type="application/json")


def _policy_json(policy: GroupPolicy) -> dict[str, object]:
    return {"models": list(policy.models), "tier": policy.tier, "rank": policy.rank}
