"""The edge's core: turn published chat events into requests on Kafka."""

from __future__ import annotations

import logging
import random
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from tollgate_core import topics
from tollgate_core.bus import Publisher
from tollgate_core.bus.codec import encode
from tollgate_core.contracts import (
    ChatRequestV1,
    ChatRequestV2,
    EmbeddingRequestV1,
    ErrorInfo,
    ReplyErrorV1,
    ReplyTo,
    new_request_id,
)
from tollgate_core.errors import DependencyUnavailable, RecordTooLarge, RequestError, TollgateError
from tollgate_core.limits import count_bad_input
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.appsync.events import (
    PublishResult,
    check_events,
    declared_channel,
    read_event,
)
from tollgate_stream.chat import conversation_of, parse_inbound
from tollgate_stream.errors import AppSyncError
from tollgate_stream.identity import Authorizer, Identity, ModelNotAllowed
from tollgate_stream.settings import StreamSettings

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.stream")

PUBLISHED = Counter("tollgate_stream_publish_events_total", "Published events", ["result"])


class Gateway:
    def __init__(
        self,
        settings: StreamSettings,
        publisher: Publisher,
        authorizer: Authorizer,
        *,
        reply_partitions: list[int],
    ) -> None:
        self._settings = settings
        self.limits = settings.limits
        self.max_body_bytes = settings.max_body_bytes
        self._publisher = publisher
        self.authorizer = authorizer
        self._reply_partitions = reply_partitions

    def channel(self, path: object, *, subscribe: bool) -> Channel:
        """Parse and check a channel: clients publish to the inbound namespace and subscribe
        to the outbound one."""
        channel = declared_channel(path, self._settings, subscribe=subscribe)
        wanted = (
            self._settings.outbound_namespace if subscribe else self._settings.inbound_namespace
        )
        if channel.namespace != wanted:
            verb = "subscribe to" if subscribe else "publish to"
            raise AppSyncError.forbidden(f"clients may not {verb} {channel.namespace}")
        return channel

    def reply_to(self) -> ReplyTo:
        """Where replies to a request accepted here must go: one of this process's partitions."""
        if not self._reply_partitions:
            raise DependencyUnavailable("the edge owns no reply partition yet")
        return ReplyTo(
            topic=topics.REPLIES,
            partition=random.choice(self._reply_partitions),  # noqa: S311
        )

    def check_size(
        self, request: ChatRequestV1 | ChatRequestV2 | EmbeddingRequestV1, *, raw_bytes: int
    ) -> None:
        """Refuse a request whose record, or the meter's admission record carrying it, would
        exceed the Kafka record limit. ``raw_bytes`` is the size of what the client sent: a
        request is at most about 1.5 times that plus its envelope, so a small one is not
        encoded twice."""
        limit = self.limits.max_request_bytes
        if raw_bytes * 2 < limit:
            return
        size = len(encode(request))
        if size > limit:
            raise RecordTooLarge(
                f"messages: the request is too large ({size} bytes encoded, at most {limit})",
                details={"field": "messages"},
            )

    async def submit(self, request: ChatRequestV1 | ChatRequestV2 | EmbeddingRequestV1) -> None:
        """Put a request built by another front door (the OpenAI API) into the pipeline."""
        await self._publisher.publish(topics.REQUESTS, request, key=request.principal)

    def outbound_for(self, inbound: Channel) -> Channel:
        return Channel((self._settings.outbound_namespace, *inbound.segments[1:]))

    async def publish(
        self,
        channel_path: object,
        events: object,
        headers: dict[str, str],
        *,
        body_sha256: str | None = None,
    ) -> PublishResult:
        """Each event becomes a request on Kafka (see :class:`EventApi`)."""
        channel = self.channel(channel_path, subscribe=False)
        events = check_events(events, self._settings)
        result = PublishResult()
        # over HTTP the request's span is current; a WebSocket message may bring a
        # traceparent of its own among its headers
        within_request = trace.get_current_span().get_span_context().is_valid
        with tracer.start_as_current_span(
            f"publish {channel.namespace}",
            context=None if within_request else propagate.extract(headers),
            kind=SpanKind.INTERNAL if within_request else SpanKind.SERVER,
            attributes={"tollgate.events": len(events)},
        ) as span:
            identity = await self.authorizer.for_channel(channel, headers)
            span.set_attribute("tollgate.principal", identity.principal)
            for index, event in enumerate(events):
                request_id = new_request_id()
                try:
                    request = self._request(request_id, event, channel, identity)
                    await self._publisher.publish(topics.REQUESTS, request, key=identity.principal)
                except TollgateError as exc:
                    result.failed.append(self._failed(request_id, index, exc, event))
                    await self._answer_failure(request_id, event, channel, identity, exc)
                    continue
                PUBLISHED.labels("ok").inc()
                result.successful.append({"identifier": request_id, "index": index})
        return result

    @staticmethod
    def _failed(request_id: str, index: int, exc: TollgateError, event: object) -> dict[str, Any]:
        PUBLISHED.labels("failed").inc()
        if isinstance(exc, RequestError):
            count_bad_input("stream.publish", exc.details.get("field"))
        return {
            "identifier": request_id,
            "index": index,
            "errorCode": exc.http_status,
            "errorMessage": exc.message,
        }

    async def _answer_failure(
        self,
        request_id: str,
        event: object,
        channel: Channel,
        identity: Identity,
        exc: TollgateError,
    ) -> None:
        """Also answer a refused event on the caller's outbound channel, as the AWS sample
        does: an error reply on the replies topic, so it reaches the caller's subscribers on
        every edge replica. When that cannot be done (Kafka is what failed), the publish
        answer's ``failed`` entry is the only answer."""
        if isinstance(exc, DependencyUnavailable):
            return
        reply = ReplyErrorV1(
            request_id=request_id,
            principal=identity.principal,
            seq=0,
            channel=self.outbound_for(channel).path,
            conversation_id=conversation_of(event),
            error=ErrorInfo(type=exc.error_type, message=exc.message, details=dict(exc.details)),
        )
        try:
            reply_to = self.reply_to()
            await self._publisher.publish(
                reply_to.topic, reply, key=identity.principal, partition=reply_to.partition
            )
        except TollgateError as failure:
            logger.warning("could not answer a refused event on its channel: %s", failure)

    def _request(
        self,
        request_id: str,
        event: object,
        channel: Channel,
        identity: Identity,
    ) -> ChatRequestV1 | ChatRequestV2:
        published = read_event(event, self._settings)
        chat = parse_inbound(published.text)
        if chat.max_tokens is not None and chat.max_tokens > self.limits.max_tokens:
            raise RequestError(
                f"invalid chat event: maxTokens: must be at most {self.limits.max_tokens}",
                details={"field": "maxTokens"},
            )
        if not identity.allows(chat.model_id):
            raise ModelNotAllowed(f"your groups do not allow the model {chat.model_id!r}")
        request = ChatRequestV2(
            request_id=request_id,
            principal=identity.principal,
            groups=identity.groups,
            allowed_models=identity.allowed_models(),
            tier=identity.tier,
            model=chat.model_id,
            messages=chat.messages,
            system=chat.system,
            max_tokens=chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop,
            tools=chat.tools,
            tool_choice=chat.tool_choice,
            extras=chat.extras,
            conversation_id=chat.conversation_id,
            channel=self.outbound_for(channel).path,
            protocol="appsync",
            reply_to=self.reply_to(),
        ).to_wire()
        self.check_size(request, raw_bytes=published.size)
        return request
