"""The HTTP side every service shares: ``/healthz``, ``/readyz``, ``/metrics`` and a uvicorn
server that runs inside the service's own event loop and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
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


def bearer_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``, compared in constant time as
    bytes (``hmac.compare_digest`` refuses non-ASCII ``str``)."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def ops_routes(health: Health) -> list[BaseRoute]:
    async def healthz(_: Request) -> Response:
        return JSONResponse(
            {"status": "ok" if health.live else "dead"}, 200 if health.live else 503
        )

    async def readyz(_: Request) -> Response:
        body = {"ready": health.ready, "checks": health.report()}
        return JSONResponse(body, 200 if health.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def ops_app(health: Health, routes: Sequence[BaseRoute] = ()) -> Starlette:
    return Starlette(routes=[*routes, *ops_routes(health)])


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
