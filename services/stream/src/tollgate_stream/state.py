"""What the edge's routes share, as one typed object on the Starlette app."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette

from tollgate_stream.appsync.events import EventApi
from tollgate_stream.limits import ConnectionLimiter
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions


@dataclass(frozen=True)
class EdgeState:
    settings: StreamSettings
    gateway: EventApi
    subscriptions: Subscriptions
    connection_limiter: ConnectionLimiter

    def attach(self, app: Starlette) -> None:
        app.state.edge = self

    @staticmethod
    def of(app: Starlette) -> EdgeState:
        """The state :meth:`attach` put on ``app`` (a request's or WebSocket's ``.app``)."""
        state: EdgeState = app.state.edge
        return state
