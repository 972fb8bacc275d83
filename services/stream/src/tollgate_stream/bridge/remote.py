"""The remote AppSync Events API: inbound subscription over WebSocket, replies over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import deque
from typing import Any

import httpx
import websockets
from prometheus_client import Counter

from tollgate_core.health import Health
from tollgate_core.retry import Backoff
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.bridge.auth import RemoteAuth, publish_body, subscribe_body
from tollgate_stream.errors import AppSyncError
from tollgate_stream.gateway import Gateway

logger = logging.getLogger(__name__)

BRIDGED = Counter("tollgate_stream_bridge_events_total", "Bridged events", ["direction", "result"])
MAX_EVENTS_PER_PUBLISH = 5
HEALTH_CHECK = "appsync"


def realtime_url(http_endpoint: str) -> str:
    """AppSync's realtime endpoint for an HTTP endpoint, as Amplify derives it."""
    url = http_endpoint.rstrip("/")
    if ".appsync-api." in url:
        url = url.replace(".appsync-api.", ".appsync-realtime-api.")
    url += "/realtime"
    return url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


def _header_protocol(headers: dict[str, str]) -> str:
    raw = json.dumps(headers, separators=(",", ":")).encode()
    return "header-" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


class InboundBridge:
    """Subscribes to ``<inbound namespace>/*`` on the remote and feeds each event to the
    gateway; reconnects with back-off until stopped."""

    def __init__(
        self,
        http_endpoint: str,
        auth: RemoteAuth,
        gateway: Gateway,
        inbound_namespace: str,
        *,
        realtime_endpoint: str | None = None,
        health: Health | None = None,
    ) -> None:
        self._health = health or Health()
        self._endpoint = http_endpoint
        self._realtime = realtime_endpoint or realtime_url(http_endpoint)
        self._auth = auth
        self._gateway = gateway
        self._channel = f"/{inbound_namespace}/*"
        self.subscribed = asyncio.Event()
        self._health.register(HEALTH_CHECK)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.5, 30)
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff.reset()
            except (OSError, websockets.WebSocketException, AppSyncError, ValueError) as exc:
                self.subscribed.clear()
                self._health.fail(HEALTH_CHECK, f"remote AppSync: {exc}"[:200])
                await backoff.wait(stop)

    async def _session(self, stop: asyncio.Event) -> None:
        connect_headers = self._auth.headers(self._endpoint, "{}")
        async with websockets.connect(
            self._realtime,
            subprotocols=["aws-appsync-event-ws", _header_protocol(connect_headers)],  # type: ignore[list-item]
            ping_interval=None,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init"}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "connection_ack":
                raise AppSyncError.unavailable(f"remote refused the connection: {ack}")
            timeout_s = int(ack.get("connectionTimeoutMs", 300_000)) / 1000
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "tollgate-inbound",
                        "channel": self._channel,
                        "authorization": self._auth.headers(
                            self._endpoint, subscribe_body(self._channel)
                        ),
                    }
                )
            )
            receive = asyncio.ensure_future(ws.recv())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    done, _ = await asyncio.wait(
                        {receive, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stopped in done:
                        return
                    if not done:
                        raise AppSyncError.unavailable("remote sent no keep-alive in time")
                    message = json.loads(receive.result())
                    receive = asyncio.ensure_future(ws.recv())
                    await self._handle(message)
            finally:
                receive.cancel()
                stopped.cancel()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe_success":
            logger.info("subscribed to %s on the remote", self._channel)
            self.subscribed.set()
            self._health.ok(HEALTH_CHECK)
        elif kind in ("subscribe_error", "connection_error", "error"):
            raise AppSyncError.unavailable(f"remote error: {message.get('errors')}")
        elif kind == "data":
            await self._forward(message.get("event"))

    async def _forward(self, raw: object) -> None:
        try:
            event = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            event = None
        channel = event.pop("channel", None) if isinstance(event, dict) else None
        if not isinstance(channel, str):
            BRIDGED.labels("inbound", "no_channel").inc()
            logger.warning("remote event without its channel dropped (see the onPublish handler)")
            return
        try:
            result = await self._gateway.publish(channel, [json.dumps(event)], {})
        except AppSyncError as exc:
            BRIDGED.labels("inbound", "refused").inc()
            logger.warning("remote event on %s refused: %s", channel[:120], exc.message)
            return
        for failed in result.failed:
            BRIDGED.labels("inbound", "failed").inc()
            logger.warning("remote event on %s failed: %s", channel[:120], failed["errorMessage"])
        BRIDGED.labels("inbound", "ok").inc(len(result.successful))


class RemoteChannels:
    """A reply sink publishing to the remote's HTTP API, in order, up to five events per
    request for consecutive events of one channel."""

    def __init__(self, http_endpoint: str, auth: RemoteAuth, client: httpx.AsyncClient) -> None:
        self._endpoint = http_endpoint
        self._auth = auth
        self._client = client
        self._pending: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def deliver(self, channel: Channel, event: str) -> int:
        self._pending.append((channel.path, event))
        self._idle.clear()
        self._wake.set()
        return 1

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_loop(), name="remote-publish")

    async def stop(self) -> None:
        """Flush what is pending (at most 5 s), then stop."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send_loop(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            channel, event = self._pending.popleft()
            batch = [event]
            while (
                len(batch) < MAX_EVENTS_PER_PUBLISH
                and self._pending
                and self._pending[0][0] == channel
            ):
                batch.append(self._pending.popleft()[1])
            await self._publish(channel, batch)

    async def _publish(self, channel: str, events: list[str]) -> None:
        body = publish_body(channel, events)
        backoff = Backoff(0.2, 3.2)
        for attempt in range(5):
            # the signed headers are sent as signed: SigV4 covers content-type too
            headers = {
                "content-type": "application/json",
                **self._auth.headers(self._endpoint, body),
            }
            try:
                response = await self._client.post(self._endpoint, content=body, headers=headers)
            except httpx.HTTPError as exc:
                logger.warning("publishing to the remote failed (%s), attempt %d", exc, attempt)
                await backoff.wait()
                continue
            if response.status_code == 200 and not response.json().get("failed"):
                BRIDGED.labels("outbound", "ok").inc(len(events))
                return
            if response.status_code < 500:
                BRIDGED.labels("outbound", "refused").inc(len(events))
                logger.warning("remote refused replies on %s: %s", channel, response.text[:300])
                return
            await backoff.wait()
        BRIDGED.labels("outbound", "lost").inc(len(events))
        logger.error("gave up publishing %d replies to %s", len(events), channel)
