"""The HTTP side every service shares: ``/healthz``, ``/readyz``, ``/metrics`` and a uvicorn
server that runs inside the service's own event loop and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator, Sequence
from typing import TypeVar

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_core.errors import RequestError
from tollgate_core.health import Health
from tollgate_core.settings import TelemetrySettings

logger = logging.getLogger(__name__)


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, or a :class:`RequestError` (400) naming the
    first field that is wrong."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(f"{where}: {first['msg']}") from exc


async def _metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def ops_routes(health: Health, *, metrics: bool = True) -> list[BaseRoute]:
    """``/healthz``, ``/readyz`` and, unless ``metrics`` is false (they are served on a port
    of their own, see :func:`metrics_server`), ``/metrics``."""

    async def healthz(_: Request) -> Response:
        return JSONResponse(
            {"status": "ok" if health.live else "dead"}, 200 if health.live else 503
        )

    async def readyz(_: Request) -> Response:
        body = {"ready": health.ready, "checks": health.report()}
        return JSONResponse(body, 200 if health.ready else 503)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *([Route("/metrics", _metrics, methods=["GET"])] if metrics else []),
    ]


def ops_app(health: Health, routes: Sequence[BaseRoute] = (), *, metrics: bool = True) -> Starlette:
    return Starlette(routes=[*routes, *ops_routes(health, metrics=metrics)])


def metrics_server(settings: TelemetrySettings) -> HttpServer | None:
    """A server of ``/metrics`` alone on ``TOLLGATE_METRICS_PORT``, or None when unset."""
    if settings.metrics_port is None:
        return None
    app = Starlette(routes=[Route("/metrics", _metrics, methods=["GET"])])
    return HttpServer(app, host=settings.metrics_host, port=settings.metrics_port)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's lifecycle owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """A uvicorn server as a start/stop component."""

    def __init__(
        self,
        app: Starlette,
        *,
        host: str,
        port: int,
        ws_max_size: int = 1_048_576,
        **config: object,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws_max_size=ws_max_size,
            **config,  # type: ignore[arg-type]
        )
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self._config.port

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._server.serve(), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError("HTTP server exited during start-up")
            await asyncio.sleep(0.01)
        logger.info("listening on %s:%d", self._config.host, self.port)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
