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
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate_core.errors import RequestError, TollgateError
from tollgate_core.health import Health
from tollgate_core.settings import TelemetrySettings

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.http")
_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


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


def error_body(exc: TollgateError) -> dict[str, object]:
    """``exc`` as every Tollgate HTTP API answers an error."""
    body: dict[str, object] = {"type": exc.error_type, "message": exc.message}
    if exc.details:
        body["details"] = exc.details
    return {"error": body}


def error_response(exc: TollgateError) -> JSONResponse:
    """``exc`` as an HTTP answer with its status; a 401 says the scheme it wants."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(error_body(exc), exc.http_status, headers=headers)


def bearer_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>``, compared in constant time as
    bytes (``hmac.compare_digest`` refuses non-ASCII ``str``)."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return secret_equals(given.strip(), token)


def secret_equals(given: str, secret: str) -> bool:
    """``given == secret`` in constant time, as bytes (``hmac.compare_digest`` refuses
    non-ASCII ``str``)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape")
    )


async def _metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def ops_routes(health: Health, *, metrics: bool = True) -> list[BaseRoute]:
    """``/healthz``, ``/readyz`` and, unless ``metrics`` is false (they are served on a port
    of their own, see :func:`metrics_server`), ``/metrics``."""

    async def healthz(_: Request) -> Response:
        return JSONResponse(*health.liveness())

    async def readyz(_: Request) -> Response:
        return JSONResponse(*health.readiness())

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *([Route("/metrics", _metrics, methods=["GET"])] if metrics else []),
    ]


def ops_app(health: Health, routes: Sequence[BaseRoute] = (), *, metrics: bool = True) -> Starlette:
    return Starlette(
        routes=[*routes, *ops_routes(health, metrics=metrics)],
        middleware=[Middleware(TracingMiddleware)],
    )


class TracingMiddleware:
    """A SERVER span per HTTP request, continuing the caller's W3C ``traceparent``.

    Written here rather than taken from opentelemetry-instrumentation-asgi because that one
    also makes a span per WebSocket connection (one connection carries many requests, each
    its own trace: they are traced where each message is handled) and, unless told not to,
    a span per body chunk sent (an SSE answer would be a span per token). Probes and
    ``/metrics`` are not traced. A streamed response is one span, ending with the stream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPS_PATHS:
            await self._app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            await self._app(scope, receive, send_noting_status)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))


def trace_headers() -> dict[str, str]:
    """The current trace context as HTTP headers (``traceparent``), for a call to another
    service."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def metrics_server(settings: TelemetrySettings) -> HttpServer | None:
    """A server of ``/metrics`` alone on ``TOLLGATE_METRICS_PORT``, or None when unset."""
    if settings.metrics_port is None:
        return None
    app = Starlette(routes=[Route("/metrics", _metrics, methods=["GET"])])
    return HttpServer(app, host=settings.metrics_host, port=settings.metrics_port)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's lifecycle owns SIGTERM."""

    _exit: asyncio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        """uvicorn's loop wakes ten times a second to refresh its ``Date`` header and look for
        a stop: an idle service's largest timer. Here it wakes once a second (the header's own
        resolution; each tick counts as ten of uvicorn's), and at once on :meth:`exit`."""
        self._exit = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)
            should_exit = await self.on_tick(counter)

    def exit(self) -> None:
        self.should_exit = True
        if self._exit is not None:
            self._exit.set()


#: how long an idle keep-alive connection stays open. Longer than any client here keeps one
#: in its pool (httpx: 5 s), so the client always closes first: a server closing an idle
#: connection just as a client sends on it turns that request into a connection reset,
#: which callers see as the service being unreachable. 75 s also outlasts the usual 60 s of
#: the load balancers in front of the edge, for the same reason.
KEEP_ALIVE_S = 75


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
            timeout_keep_alive=KEEP_ALIVE_S,
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
        self._server.exit()
        with contextlib.suppress(asyncio.CancelledError):
            await task
