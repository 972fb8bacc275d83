"""Routes of the web page: the page, its configuration and the development sign-in."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tollgate_stream import limits
from tollgate_stream.settings import StreamSettings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: a principal as the channels can carry it (see docs/edge.md: channel segments)
_SUB = r"^[A-Za-z0-9-]{1,50}$"
_GROUP = r"^[A-Za-z0-9._-]{1,64}$"


class DevSignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(pattern=_SUB)
    groups: tuple[Annotated[str, Field(pattern=_GROUP)], ...] = Field(default=(), max_length=10)


def _error(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status)


class WebRoutes:
    def __init__(self, settings: StreamSettings, auth: httpx.AsyncClient | None) -> None:
        self._settings = settings
        self._auth = auth

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/", self.index, methods=["GET"]),
            Route("/web/config.json", self.config, methods=["GET"]),
        ]
        if self._settings.web_sign_in == "local":
            routes.append(Route("/web/dev-token", self.dev_token, methods=["POST"]))
        routes.append(Mount("/web", StaticFiles(directory=STATIC), name="web"))
        return routes

    async def index(self, request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", media_type="text/html")
        response.headers["content-security-policy"] = self._csp()
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        return response

    def _csp(self) -> str:
        connect = ["'self'", "ws:", "wss:"]
        if self._settings.oidc_token_url:
            parts = urlsplit(self._settings.oidc_token_url)
            connect.append(f"{parts.scheme}://{parts.netloc}")
        return (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {' '.join(connect)}; frame-ancestors 'none'; base-uri 'none'"
        )

    async def config(self, request: Request) -> Response:
        s = self._settings
        body: dict[str, Any] = {
            "signIn": s.web_sign_in,
            "inboundNamespace": s.inbound_namespace,
            "outboundNamespace": s.outbound_namespace,
        }
        if s.web_sign_in == "oidc":
            body["oidc"] = {
                "authorizeUrl": s.oidc_authorize_url,
                "tokenUrl": s.oidc_token_url,
                "clientId": s.oidc_client_id,
                "scopes": s.oidc_scopes,
            }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def dev_token(self, request: Request) -> Response:
        """A token from the auth service's development IdP, for the name typed in."""
        try:
            raw = await limits.read_body(request, 4096)
            sign_in = DevSignIn.model_validate_json(raw)
        except limits.BodyTooLarge:
            return _error(413, "validation_error", "the sign-in body is too large")
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, "validation_error", f"{where}: {first['msg']}")
        if self._auth is None:
            return _error(404, "not_found", "the development sign-in needs the auth service")
        try:
            answer = await self._auth.post(
                "/v1/dev/token", json={"sub": sign_in.user, "groups": list(sign_in.groups)}
            )
            answer.raise_for_status()
            token = answer.json()["access_token"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.warning("development sign-in failed: %s", exc)
            return _error(503, "service_unavailable", "the identity provider is unavailable")
        return JSONResponse(
            {"token": token, "user": sign_in.user}, headers={"cache-control": "no-store"}
        )
