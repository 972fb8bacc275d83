"""CORS on the edge's client routes, so a page served from another origin (a development
server, a CDN) can publish events and call the API. Only ``/event`` and ``/v1/*`` answer
cross-origin, only for the configured origins (none by default); the WebSocket needs no CORS
(browsers send its ``Origin``, which the AppSync protocol does not restrict)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: what browser clients of the AppSync and OpenAI APIs send (Amplify adds the x-amz ones)
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "x-amz-date",
    "x-amz-user-agent",
    "x-amz-security-token",
    "traceparent",
)
EXPOSED_HEADERS = ("retry-after", "x-request-id")


def is_client_route(path: str) -> bool:
    return path == "/event" or path.startswith("/v1/")


class ClientRouteCors:
    """Starlette's ``CORSMiddleware`` on the client routes; every other path passes by."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=list(ALLOWED_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_client_route(scope["path"]):
            await self._cors(scope, receive, send)
            return
        await self._app(scope, receive, send)
