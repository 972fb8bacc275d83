"""The router's HTTP API on its ops port: ``GET /v1/models`` (OpenAI list format, for the
edge to proxy) and the admin API of prepared responses (Bearer admin token)::

    POST   /admin/prepared          add (or replace) one; body: PreparedIn
    GET    /admin/prepared          list (``?principal=`` filters)
    DELETE /admin/prepared/{id}     remove
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_core.contracts import ChatMessage, utcnow
from tollgate_core.errors import NotFound, TollgateError, Unauthenticated
from tollgate_core.http import bearer_matches, error_response, parse_body
from tollgate_router.catalog import CatalogSource
from tollgate_router.prepared import ANY_MODEL, PreparedResponse, PreparedStore, prepared_key


class PreparedIn(BaseModel):
    """An operator's prepared answer. Exactly one of ``expires_at`` / ``ttl_seconds``."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(default=ANY_MODEL, description="a model id or * for every model")
    principal: str | None = Field(default=None, description="None: public")
    system: list[str] = Field(default_factory=list)
    messages: list[ChatMessage] = Field(min_length=1)
    response: str = Field(min_length=1)
    expires_at: datetime | None = None
    ttl_seconds: int | None = Field(default=None, gt=0)
    description: str = ""

    @model_validator(mode="after")
    def _one_expiry(self) -> PreparedIn:
        if (self.expires_at is None) == (self.ttl_seconds is None):
            raise ValueError("give exactly one of expires_at and ttl_seconds")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone")
        return self

    def entry(self, now: datetime) -> PreparedResponse:
        expires = self.expires_at or now + timedelta(seconds=self.ttl_seconds or 0)
        return PreparedResponse(
            id=str(uuid4()),
            key=prepared_key(self.system, self.messages),
            model_scope=self.model,
            principal=self.principal,
            response=self.response,
            expires_at=expires,
            created_at=now,
            description=self.description,
        )


def entry_json(entry: PreparedResponse) -> dict[str, Any]:
    return {
        "id": entry.id,
        "key": entry.key,
        "model": entry.model_scope,
        "principal": entry.principal,
        "response": entry.response,
        "expires_at": entry.expires_at.isoformat(),
        "created_at": entry.created_at.isoformat(),
        "description": entry.description,
    }


def models_route(catalog: CatalogSource) -> BaseRoute:
    async def models(_: Request) -> Response:
        current = catalog.current
        data = [
            {
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": current.providers[m.provider].type,
                "context_window": m.context_window,
                "max_tokens": {"default": m.default_max_tokens, "max": m.max_max_tokens},
                "pricing": {
                    "input_per_mtok_usd": str(m.input_price_per_mtok),
                    "output_per_mtok_usd": str(m.output_price_per_mtok),
                },
                "groups": list(m.groups),
                "fallbacks": list(m.fallbacks),
                "default": m.id == current.default_model,
            }
            for m in current.models
        ]
        return JSONResponse({"object": "list", "data": data})

    return Route("/v1/models", models, methods=["GET"])


def admin_routes(store: PreparedStore, token: SecretStr | None) -> list[BaseRoute]:
    secret = token.get_secret_value() if token is not None else None

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Any:
        """``handler`` for the admin token's holder only; a typed error as its answer."""

        async def guarded(request: Request) -> Response:
            try:
                if not bearer_matches(request.headers.get("authorization"), secret):
                    raise Unauthenticated("admin token required")
                return await handler(request)
            except TollgateError as exc:
                return error_response(exc)

        return guarded

    async def add(request: Request) -> Response:
        body = await parse_body(request, PreparedIn)
        entry = await store.add(body.entry(utcnow()))
        return JSONResponse(entry_json(entry), 201)

    async def listing(request: Request) -> Response:
        entries = await store.list(principal=request.query_params.get("principal"))
        return JSONResponse({"data": [entry_json(e) for e in entries]})

    async def remove(request: Request) -> Response:
        if not await store.remove(request.path_params["entry_id"]):
            raise NotFound("no such prepared response")
        return Response(status_code=204)

    return [
        Route("/admin/prepared", guarded(add), methods=["POST"]),
        Route("/admin/prepared", guarded(listing), methods=["GET"]),
        Route("/admin/prepared/{entry_id}", guarded(remove), methods=["DELETE"]),
    ]
