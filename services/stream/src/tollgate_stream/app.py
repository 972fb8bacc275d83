"""The edge's HTTP and WebSocket routes."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute

from tollgate_core.health import Health
from tollgate_core.http import ops_app
from tollgate_stream.appsync.events import EventApi
from tollgate_stream.appsync.http_publish import publish_endpoint
from tollgate_stream.appsync.websocket import realtime_endpoint
from tollgate_stream.cors import ClientRouteCors
from tollgate_stream.limits import ConnectionLimiter
from tollgate_stream.openai.api import OpenAIApi
from tollgate_stream.settings import StreamSettings
from tollgate_stream.state import EdgeState
from tollgate_stream.subscriptions import Subscriptions


def create_app(
    settings: StreamSettings,
    health: Health,
    gateway: EventApi,
    subscriptions: Subscriptions,
    openai_api: OpenAIApi | None = None,
    *,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The edge's app; ``extra_routes`` come after the protocol routes (the usage API, the
    web page)."""
    app = ops_app(
        health,
        [
            Route("/event", publish_endpoint, methods=["POST"]),
            WebSocketRoute("/event/realtime", realtime_endpoint),
            *(openai_api.routes() if openai_api is not None else []),
            *extra_routes,
        ],
        metrics=settings.telemetry.metrics_port is None,
    )
    if settings.cors_origin_list:
        app.add_middleware(ClientRouteCors, origins=settings.cors_origin_list)
    limiter = ConnectionLimiter(settings.max_connections, settings.max_connections_per_address)
    EdgeState(settings, gateway, subscriptions, limiter).attach(app)
    return app
