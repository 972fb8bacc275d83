"""Composition root of the edge (stream) service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import botocore.session
import httpx
from pydantic import TypeAdapter
from starlette.routing import BaseRoute

from tollgate_core import topics
from tollgate_core.bus import Decoder, EventConsumer, EventProducer
from tollgate_core.contracts import (
    REPLY_SCHEMA,
    REPLY_SCHEMA_V2,
    EmbeddingsChunkV1,
    ReplyChunkV2,
    ReplyV1,
)
from tollgate_core.errors import ConfigurationError, DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.http import HttpServer
from tollgate_core.runtime import run_service, start_with_retry, watch_dependency
from tollgate_stream.app import create_app
from tollgate_stream.bridge.auth import ApiKeyAuth, IamAuth, RemoteAuth
from tollgate_stream.bridge.remote import InboundBridge, RemoteChannels
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import (
    Authorizer,
    AuthServiceAuthorizer,
    ChannelOwnerAuthorizer,
)
from tollgate_stream.openai.api import OpenAIApi
from tollgate_stream.openai.auth import (
    AuthServiceBearerAuthenticator,
    BearerAuthenticator,
    DevBearerAuthenticator,
)
from tollgate_stream.openai.models import RouterModelCatalog, StaticModelCatalog
from tollgate_stream.relay import Relay
from tollgate_stream.replies import Reply, ReplyDispatcher, local_interest
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.usage import MeterClient, MeterUsageAnnotator, UsageRoutes
from tollgate_stream.waiters import ReplyWaiters
from tollgate_stream.web import WebRoutes

logger = logging.getLogger(__name__)

#: what the replies topic carries: chat replies of both versions and, for embeddings
#: requests, vector chunks
REPLIES: Decoder[Any] = Decoder(
    {
        REPLY_SCHEMA: TypeAdapter(ReplyV1),
        REPLY_SCHEMA_V2: TypeAdapter(ReplyChunkV2),
        EmbeddingsChunkV1.SCHEMA: TypeAdapter(EmbeddingsChunkV1),
    }
)


async def relay(settings: StreamSettings, stop: asyncio.Event) -> None:
    """A plain AppSync Events pub/sub (no Kafka): the stand-in remote for bridge mode."""
    subscriptions = Subscriptions()
    http = HttpServer(
        create_app(settings, Health(), Relay(settings, subscriptions), subscriptions),
        host=settings.host,
        port=settings.port,
        **_websocket_options(settings),
        **_tls(settings),
    )
    await http.start()
    try:
        logger.info("relay ready")
        await stop.wait()
    finally:
        await http.stop()


def _websocket_options(settings: StreamSettings) -> dict[str, Any]:
    return {
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_timeout_s,
    }


def _tls(settings: StreamSettings) -> dict[str, Any]:
    if settings.tls_cert is not None and settings.tls_key is not None:
        return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    return {}


def _remote_auth(settings: StreamSettings) -> RemoteAuth:
    if settings.appsync_auth == "iam":
        credentials = botocore.session.Session().get_credentials()
        return IamAuth(credentials, settings.appsync_region)
    if settings.appsync_api_key is None:
        raise ConfigurationError("bridge mode with api_key auth needs an API key")
    return ApiKeyAuth(settings.appsync_api_key.get_secret_value())


def build_authorizer(settings: StreamSettings, client: httpx.AsyncClient | None) -> Authorizer:
    if settings.auth_mode == "none" or client is None:
        logger.warning(
            "TOLLGATE_STREAM_AUTH_MODE=none: channels are trusted, no credential is checked"
        )
        return ChannelOwnerAuthorizer()
    return AuthServiceAuthorizer(
        client,
        inbound_namespace=settings.inbound_namespace,
        outbound_namespace=settings.outbound_namespace,
        ttl_s=settings.auth_cache_ttl_s,
    )


def build_bearer_authenticator(
    settings: StreamSettings, authorizer: Authorizer
) -> BearerAuthenticator:
    if isinstance(authorizer, AuthServiceAuthorizer):
        return AuthServiceBearerAuthenticator(authorizer)
    return DevBearerAuthenticator(settings.openai_dev_principal)


async def serve(settings: StreamSettings, stop: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as resources:
        client = None
        if settings.auth_mode == "service":
            client = await resources.enter_async_context(
                httpx.AsyncClient(base_url=settings.auth_url, timeout=settings.auth_timeout_s)
            )
        meter = MeterClient(
            settings.meter_url,
            admin_token=(
                settings.meter_admin_token.get_secret_value()
                if settings.meter_admin_token is not None
                else None
            ),
            timeout_s=settings.meter_timeout_s,
        )
        resources.push_async_callback(meter.aclose)
        await _serve(settings, stop, build_authorizer(settings, client), meter, client)


def client_routes(
    settings: StreamSettings, meter: MeterClient, auth_client: httpx.AsyncClient | None
) -> list[BaseRoute]:
    """The usage API through the meter and, unless turned off, the web page."""
    routes = UsageRoutes(meter).routes()
    if settings.web_enabled:
        routes += WebRoutes(settings, auth_client).routes()
    return routes


def usage_annotator(
    settings: StreamSettings, meter: MeterClient, authorizer: Authorizer
) -> MeterUsageAnnotator | None:
    """``tokenUsage`` on answers, when the edge may ask the meter for any principal."""
    if not meter.reports_usage:
        return None
    groups_of = (
        authorizer.groups_of
        if isinstance(authorizer, AuthServiceAuthorizer)
        else lambda principal: ()
    )
    return MeterUsageAnnotator(meter, groups_of, settings.warning_thresholds())


async def _serve(
    settings: StreamSettings,
    stop: asyncio.Event,
    authorizer: Authorizer,
    meter: MeterClient,
    auth_client: httpx.AsyncClient | None,
) -> None:
    health = Health()
    health.register("kafka")
    producer = EventProducer(
        settings.kafka, client_id="stream", max_record_bytes=settings.limits.max_record_bytes
    )
    subscriptions = Subscriptions()
    #: every partition of the replies topic (read from its metadata at start): a request names
    #: any of them, and every edge replica reads them all
    partitions: list[int] = []
    gateway = Gateway(settings, producer, authorizer, reply_partitions=partitions)
    waiters = ReplyWaiters()
    openai_api, catalog = _openai_api(settings, gateway, waiters, authorizer)
    bridging = _bridging(settings, producer, partitions, health)
    sink: Subscriptions | RemoteChannels = subscriptions if bridging is None else bridging.remote
    routes = [*openai_api.routes(), *client_routes(settings, meter, auth_client)]
    http = _http_server(settings, health, gateway, subscriptions, routes)
    consumers: list[EventConsumer[Reply]] = []

    async def start_kafka() -> None:
        await producer.start()
        available = await producer.partitions_for(topics.REPLIES)
        if not available:
            raise DependencyUnavailable(f"topic {topics.REPLIES} does not exist")
        partitions[:] = sorted(available)
        if not consumers:
            usage = usage_annotator(settings, meter, authorizer)
            consumers.extend(reply_consumers(settings, producer, partitions, sink, waiters, usage))
        for consumer in consumers:
            await consumer.start()
        logger.info("reading all %d reply partitions", len(partitions))

    await http.start()
    try:
        if await start_with_retry("kafka", start_kafka, health, stop):
            if bridging is not None:
                await bridging.remote.start()
                bridge_task = asyncio.create_task(bridging.bridge.run(stop), name="appsync-bridge")
                logger.info("bridging %s", settings.appsync_endpoint)
            logger.info("stream ready")
            # until stop; not ready while the brokers are lost (the clients reconnect)
            await watch_dependency("kafka", producer.ping, health, stop)
            if bridging is not None:
                await bridge_task
    finally:
        await http.stop()
        if bridging is not None:
            await bridging.remote.stop()
            await bridging.client.aclose()
        for consumer in consumers:
            await consumer.stop()
        await producer.stop()
        await catalog.aclose()


def _openai_api(
    settings: StreamSettings, gateway: Gateway, waiters: ReplyWaiters, authorizer: Authorizer
) -> tuple[OpenAIApi, RouterModelCatalog]:
    """The OpenAI-compatible API, and the router's model list it shows (closed at stop)."""
    catalog = RouterModelCatalog(settings.router_url, StaticModelCatalog(settings.model_list()))
    api = OpenAIApi(
        gateway,
        waiters,
        build_bearer_authenticator(settings, authorizer),
        catalog,
        reply_timeout_s=settings.openai_reply_timeout_s,
    )
    return api, catalog


def _http_server(
    settings: StreamSettings,
    health: Health,
    gateway: Gateway,
    subscriptions: Subscriptions,
    routes: list[BaseRoute],
) -> HttpServer:
    """The edge's app (AppSync routes, then ``routes``) on its server, with the WebSocket
    and TLS options of ``settings``."""
    app = create_app(settings, health, gateway, subscriptions, extra_routes=routes)
    return HttpServer(
        app,
        host=settings.host,
        port=settings.port,
        **_websocket_options(settings),
        **_tls(settings),
    )


@dataclass(frozen=True)
class _Bridging:
    """Bridge mode's parts: the remote AppSync API's channels (where replies go), the
    bridge reading its inbound namespace, and their HTTP client."""

    remote: RemoteChannels
    bridge: InboundBridge
    client: httpx.AsyncClient


def _bridging(
    settings: StreamSettings, producer: EventProducer, partitions: list[int], health: Health
) -> _Bridging | None:
    """Bridge mode's parts, or None in any other mode."""
    if settings.mode != "appsync":
        return None
    if settings.appsync_endpoint is None:
        raise ConfigurationError("bridge mode needs TOLLGATE_STREAM_APPSYNC_ENDPOINT")
    auth = _remote_auth(settings)
    client = httpx.AsyncClient(timeout=10)
    remote = RemoteChannels(settings.appsync_endpoint, auth, client)
    # The remote AppSync API authorized its clients (its onSubscribe/onPublish handlers);
    # what it relays is trusted as published by the channel's <sub>.
    bridged = Gateway(settings, producer, ChannelOwnerAuthorizer(), reply_partitions=partitions)
    bridge = InboundBridge(
        settings.appsync_endpoint,
        auth,
        bridged,
        settings.inbound_namespace,
        realtime_endpoint=settings.appsync_realtime_endpoint,
        health=health,
    )
    return _Bridging(remote, bridge, client)


def reply_consumers(
    settings: StreamSettings,
    producer: EventProducer,
    partitions: list[int],
    sink: Subscriptions | RemoteChannels,
    waiters: ReplyWaiters,
    usage: MeterUsageAnnotator | None = None,
) -> list[EventConsumer[Reply]]:
    """How replies reach this replica's clients.

    Every edge replica reads every partition of the replies topic from the end, without a
    consumer group, and delivers what its own clients wait for: subscribers of the reply's
    channel held by this process, and the OpenAI API request waiting on this process for its
    id. ``accept`` decides that from the record's headers, so a reply for someone else's
    client costs a header check, not a decode. So a reply reaches every subscriber of its
    channel on any replica, and replicas come and go without any hand-over.

    In bridge mode every channel reply goes to the remote AppSync API, and the OpenAI API's
    to the local waiter. Bridge mode runs as one replica: several would each receive every
    inbound event from the remote's subscription and each publish every reply."""
    local = isinstance(sink, Subscriptions)
    return [
        EventConsumer(
            settings.kafka,
            name="stream-replies",
            topics=[topics.REPLIES],
            partitions=partitions,
            from_latest=True,
            decoder=REPLIES,
            handler=ReplyDispatcher(sink, waiters, usage=usage),
            dead_letter=producer,
            accept=local_interest(
                sink if isinstance(sink, Subscriptions) else None, waiters, every_channel=not local
            ),
        )
    ]


def main() -> None:
    settings = StreamSettings()
    entry = relay if settings.mode == "relay" else serve
    run_service("stream", settings.telemetry, lambda stop: entry(settings, stop))
