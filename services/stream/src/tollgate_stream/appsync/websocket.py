"""``/event/realtime``: the AppSync Events WebSocket protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tollgate_core.limits import count_bad_input
from tollgate_stream import limits
from tollgate_stream.appsync import auth_headers
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.appsync.events import EventApi
from tollgate_stream.errors import AppSyncError
from tollgate_stream.identity import Identity
from tollgate_stream.settings import StreamSettings
from tollgate_stream.state import EdgeState
from tollgate_stream.subscriptions import Subscriptions

logger = logging.getLogger(__name__)

CONNECTIONS = Gauge("tollgate_stream_connections", "Open AppSync WebSocket connections")
MESSAGES = Counter("tollgate_stream_ws_messages_total", "Client messages", ["type"])
SLOW_CLIENTS = Counter("tollgate_stream_slow_clients_total", "Connections closed as too slow")
TIMEOUTS = Counter(
    "tollgate_stream_connection_timeouts_total",
    "Connections closed for no connection_init, or idle with no subscription",
)
REVOKED = Counter(
    "tollgate_stream_revoked_total",
    "Connections closed, or subscriptions ended, when their permission was withdrawn",
    ["what"],
)
REFUSED = Counter(
    "tollgate_stream_connections_refused_total", "WebSocket upgrades refused by a connection cap"
)


class Connection:
    """One client connection: a bounded send queue drained by its own writer task, so a slow
    client never holds up delivery to the others."""

    def __init__(
        self,
        ws: WebSocket,
        gateway: EventApi,
        subscriptions: Subscriptions,
        settings: StreamSettings,
        headers: dict[str, str],
    ) -> None:
        self._ws = ws
        self._gateway = gateway
        self._subscriptions = subscriptions
        self._settings = settings
        self._headers = headers
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(settings.send_queue_size)
        self._closing = False
        self._initialized = False
        self._opened = self._last_seen = asyncio.get_running_loop().time()
        #: set when the connection must end at once (a client that does not keep up)
        self._aborted = asyncio.Event()
        #: set when the connection must end: the reader stops waiting for the client
        self._stopped = asyncio.Event()
        self._close_code = 1000
        self._writer_task: asyncio.Task[None] | None = None
        #: each subscription with the credential and identity that were allowed it, so the
        #: permission can be checked again while it lasts (revocation, expiry)
        self._grants: dict[str, tuple[Channel, dict[str, str], Identity]] = {}
        self._recheck: asyncio.Task[None] | None = None  # started with the first subscription
        self._keepalive_task: asyncio.Task[None] | None = None  # started by connection_init

    # --- outgoing ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self._enqueue(json.dumps(message, separators=(",", ":")))

    def send_error(self, kind: str, error: AppSyncError, op_id: object = None) -> None:
        """An error frame of ``kind`` (``error``, ``subscribe_error`` …), naming the operation
        ``op_id`` when the client gave one. A ``connection_error`` carries its errors at top
        level as AppSync Events sends them, and under ``payload`` as older clients read them."""
        errors = [error.as_error()]
        message: dict[str, Any] = {"type": kind, "errors": errors}
        if op_id is not None:
            message["id"] = op_id
        if kind == "connection_error":
            message["payload"] = {"errors": errors}
        self.send(message)

    def send_data(self, subscription_id: str, event: str) -> None:
        self._enqueue(
            json.dumps(
                {"type": "data", "id": subscription_id, "event": event}, separators=(",", ":")
            )
        )

    def _enqueue(self, text: str) -> None:
        if self._closing:
            return
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            SLOW_CLIENTS.inc()
            logger.warning("closing a connection that does not keep up with its events")
            self._abort()

    def _abort(self) -> None:
        """End the connection now: its queue is full, so the writer would never reach the
        end-of-queue marker; it is cancelled and the socket closed."""
        self._close()
        self._aborted.set()
        self._stopped.set()
        if self._writer_task is not None:
            self._writer_task.cancel()

    def _end(self, error: AppSyncError, code: int = 1000) -> None:
        """Tell the client why with a ``connection_error``, then close the socket with
        ``code``."""
        self.send_error("connection_error", error)
        self._close_code = code
        self._close()
        self._stopped.set()

    def _close(self) -> None:
        self._closing = True
        self._subscriptions.drop(self)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _writer(self) -> None:
        while (text := await self._queue.get()) is not None:
            await self._ws.send_text(text)
        if self._ws.application_state != WebSocketState.DISCONNECTED:
            await self._ws.close(self._close_code)

    async def _keepalive(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._settings.keepalive_interval_s)
            self.send({"type": "ka"})

    # --- incoming ------------------------------------------------------------------------

    def _deadline(self) -> tuple[float, str] | None:
        """When the connection must have spoken next, and what it is told if it has not."""
        if not self._initialized:
            return (
                self._opened + self._settings.connection_init_timeout_s,
                "no connection_init received in time",
            )
        if self._subscriptions.count(self) == 0:
            return (
                self._last_seen + self._settings.idle_timeout_s,
                "the connection was idle with no subscription",
            )
        return None

    async def _receive(self) -> Mapping[str, Any] | None:
        """The next client message; None when the connection must end (closed by the
        client, aborted, or silent past its deadline)."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        receive = asyncio.ensure_future(self._ws.receive())
        aborted = asyncio.ensure_future(self._stopped.wait())
        try:
            done, _ = await asyncio.wait(
                {receive, aborted},
                timeout=None if deadline is None else max(0.0, deadline[0] - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            aborted.cancel()
        if receive not in done:
            receive.cancel()
            if not self._stopped.is_set() and deadline is not None:
                TIMEOUTS.inc()
                self._end(AppSyncError.timeout(deadline[1]))
            return None
        received: Mapping[str, Any] = receive.result()
        self._last_seen = loop.time()
        if received["type"] == "websocket.disconnect":
            return None
        return received

    async def run(self) -> None:
        writer = self._writer_task = asyncio.create_task(self._writer())
        try:
            while not self._closing:
                received = await self._receive()
                if received is None or not await self._handle(received):
                    break
        except WebSocketDisconnect:
            pass
        finally:
            await self._finish(writer)

    async def _handle(self, received: Mapping[str, Any]) -> bool:
        """Answer one client frame; False when the connection is to end."""
        text = received.get("text")
        if text is None:
            self.send_error(
                "error",
                AppSyncError.bad_request("binary frames are not supported: send JSON as text"),
            )
            return True
        message = self._parse(text)
        if message is None:
            return True
        kind = message.get("type")
        MESSAGES.labels(kind if isinstance(kind, str) and len(kind) < 32 else "?").inc()
        if kind == "connection_init":
            return await self._connection_init()
        if kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            self._unsubscribe(message)
        elif kind == "publish":
            await self._publish(message)
        else:
            self.send_error(
                "error",
                AppSyncError.unsupported(f"unknown message type {str(kind)[:64]!r}"),
                message.get("id"),
            )
        return True

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        self._close()
        for task in (self._recheck, self._keepalive_task):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await writer
        if self._aborted.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._ws.close(1008)

    async def _reauthorize(self) -> None:
        """Check each subscription's permission again every ``reauthorize_interval_s``, and
        at the moment its credential expires: a revoked or expired credential ends the
        connection (``connection_error`` ``UnauthorizedException``, close 1008); a channel
        the caller may no longer use loses its subscription (``subscribe_error``). While the
        auth service is unavailable subscriptions are kept."""
        interval = self._settings.reauthorize_interval_s
        while not self._closing:
            expiries = [i.expires_at for _, _, i in self._grants.values() if i.expires_at]
            wait = interval
            if expiries:
                wait = max(0.0, min(interval, min(expiries) - time.time()))
            await asyncio.sleep(wait)
            for sub_id, (channel, headers, identity) in list(self._grants.items()):
                if self._closing:
                    return
                if identity.expires_at is not None and identity.expires_at <= time.time():
                    self._revoked("the credential has expired")
                    return
                try:
                    await self._gateway.authorizer.for_channel(channel, headers)
                except AppSyncError as exc:
                    if exc.http_status == 401:
                        self._revoked(exc.message)
                        return
                    if exc.http_status == 403 and self._subscriptions.remove(self, sub_id):
                        self._grants.pop(sub_id, None)
                        REVOKED.labels("subscription").inc()
                        self.send_error("subscribe_error", exc, sub_id)

    def _revoked(self, why: str) -> None:
        REVOKED.labels("connection").inc()
        logger.info("closing a connection whose credential is no longer valid: %s", why)
        self._end(AppSyncError.unauthorized(why), 1008)

    def _parse(self, text: str) -> dict[str, Any] | None:
        problem = "message is not a JSON object"
        try:
            message = limits.loads(text, self._settings.max_json_depth)
        except limits.JsonTooDeep as exc:
            message, problem = None, str(exc)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            count_bad_input("stream.websocket", "message")
            self.send_error("error", AppSyncError.bad_request(problem))
            return None
        return message

    async def _connection_init(self) -> bool:
        """Acknowledge, or refuse with ``connection_error`` and close when the connection's
        own credential is bad (as AppSync does); False when refused."""
        try:
            await self._gateway.authorizer.connect(self._headers)
        except AppSyncError as exc:
            self._end(exc)
            return False
        self._ack()
        self._initialized = True
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.create_task(self._keepalive())
        return True

    def _ack(self) -> None:
        timeout = self._settings.connection_timeout_ms
        self.send(
            {
                "type": "connection_ack",
                "connectionTimeoutMs": timeout,
                "payload": {"connectionTimeoutMs": timeout},
            }
        )

    def _auth(self, message: dict[str, Any]) -> dict[str, str]:
        authorization = message.get("authorization")
        if not isinstance(authorization, dict):
            payload = message.get("payload")
            extensions = payload.get("extensions") if isinstance(payload, dict) else None
            authorization = (
                extensions.get("authorization") if isinstance(extensions, dict) else None
            )
        if isinstance(authorization, dict):
            return {**self._headers, **auth_headers.normalize(authorization)}
        return self._headers

    async def _subscribe(self, message: dict[str, Any]) -> None:
        sub_id = message.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            self.send_error("subscribe_error", AppSyncError.bad_request("subscribe needs an id"))
            return
        channel_path = message.get("channel")
        if channel_path is None and isinstance(message.get("payload"), dict):
            channel_path = message["payload"].get("channel")
        try:
            if self._subscriptions.count(self) >= self._settings.max_subscriptions:
                raise AppSyncError.limit(
                    f"at most {self._settings.max_subscriptions} subscriptions per connection"
                )
            channel = self._gateway.channel(channel_path, subscribe=True)
            headers = self._auth(message)
            identity = await self._gateway.authorizer.for_channel(channel, headers)
        except AppSyncError as exc:
            self.send_error("subscribe_error", exc, sub_id)
            return
        self._grants[sub_id] = (channel, headers, identity)
        if self._recheck is None:
            self._recheck = asyncio.create_task(self._reauthorize())
        self._subscriptions.add(self, sub_id, channel)
        self.send({"type": "subscribe_success", "id": sub_id})

    def _unsubscribe(self, message: dict[str, Any]) -> None:
        sub_id = message.get("id")
        if isinstance(sub_id, str) and self._subscriptions.remove(self, sub_id):
            self._grants.pop(sub_id, None)
            self.send({"type": "unsubscribe_success", "id": sub_id})
        else:
            self.send_error(
                "unsubscribe_error", AppSyncError.unknown_operation("no such subscription"), sub_id
            )

    async def _publish(self, message: dict[str, Any]) -> None:
        pub_id = message.get("id")
        if not isinstance(pub_id, str) or not pub_id:
            self.send_error("publish_error", AppSyncError.bad_request("publish needs an id"))
            return
        try:
            result = await self._gateway.publish(
                message.get("channel"), message.get("events"), self._auth(message)
            )
        except AppSyncError as exc:
            self.send_error("publish_error", exc, pub_id)
            return
        self.send(
            {
                "type": "publish_success",
                "id": pub_id,
                "successful": result.successful,
                "failed": result.failed,
            }
        )


async def realtime_endpoint(websocket: WebSocket) -> None:
    edge = EdgeState.of(websocket.app)
    limiter = edge.connection_limiter
    address = websocket.client.host if websocket.client is not None else "?"
    refused = limiter.acquire(address)
    if refused is not None:
        REFUSED.inc()
        logger.info("refusing a WebSocket from %s: %s", address, refused)
        await websocket.close(1013)  # before the upgrade: the client gets HTTP 403
        return
    try:
        offered = websocket.scope.get("subprotocols", [])
        headers = {
            **auth_headers.pick({k.lower(): v for k, v in websocket.headers.items()}),
            **auth_headers.from_subprotocols(offered),
        }
        subprotocol = auth_headers.PROTOCOL if auth_headers.PROTOCOL in offered else None
        await websocket.accept(subprotocol=subprotocol)
        connection = Connection(websocket, edge.gateway, edge.subscriptions, edge.settings, headers)
        CONNECTIONS.inc()
        try:
            await connection.run()
        finally:
            CONNECTIONS.dec()
    finally:
        limiter.release(address)
