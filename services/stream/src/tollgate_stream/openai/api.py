"""``POST /v1/chat/completions`` and ``GET /v1/models``, through the same pipeline as AppSync.

A request becomes a ``ChatRequestV2`` (``protocol="openai"``, no channel; published as v1 when
it only needs v1's fields) whose replies come
back on one of this process's reply partitions; the :class:`ReplyWaiters` registry hands them
to the HTTP request. The response status is chosen from the first reply, so a rejection
(rate limit, unknown model, …) is a proper HTTP error even for a streaming request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tollgate_core.contracts import (
    ChatRequestV1,
    ChatRequestV2,
    EmbeddingsChunkV1,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    new_request_id,
)
from tollgate_core.errors import RecordTooLarge, TollgateError
from tollgate_core.limits import count_bad_input
from tollgate_stream import limits
from tollgate_stream.errors import OpenAIError
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import Identity
from tollgate_stream.openai import convert, schema
from tollgate_stream.openai.auth import BearerAuthenticator, bearer_token
from tollgate_stream.openai.embeddings import EmbeddingsEndpoint
from tollgate_stream.openai.models import ModelCatalog
from tollgate_stream.waiters import Reply, ReplyWaiters, Waiter

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "tollgate_stream_openai_requests_total", "OpenAI API requests", ["stream", "status"]
)


def _request_fields(chat: schema.ChatCompletionRequest) -> dict[str, Any]:
    """The contract's fields of an OpenAI request (bad input raised as ``OpenAIError``)."""
    return {
        "messages": convert.conversation(chat),
        "system": chat.system(),
        "max_tokens": chat.output_limit(),
        "temperature": chat.temperature,
        "top_p": chat.top_p,
        "seed": chat.seed,
        "stop": chat.stop_sequences(),
        "tools": convert.tools(chat),
        "tool_choice": convert.tool_choice(chat),
        "response_format": convert.response_format(chat),
        "extras": chat.provider_extras or {},
    }


def error_response(exc: OpenAIError) -> JSONResponse:
    headers = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)


def _events_of(reply: Reply, chunks: schema.Chunks, events: list[bytes]) -> bool:
    """Add the SSE events of ``reply`` to ``events``; whether it ended the stream."""
    if isinstance(reply, ReplyChunkV1 | ReplyChunkV2):
        events.append(_sse(chunks.chunk(delta=schema.delta_of(reply))))
        return False
    if isinstance(reply, ReplyDoneV1):
        finish = schema.finish_reason(reply.stop_reason)
        events.append(_sse(chunks.chunk(delta={}, finish=finish)))
        if chunks.include_usage:
            events.append(_sse(chunks.chunk(usage=schema.usage_object(reply))))
        events.append(_sse("[DONE]"))
        return True
    if isinstance(reply, ReplyErrorV1):
        events.append(_sse(schema.error_from_reply(reply.error).body()))
        return True
    return False  # vectors are never sent to a chat request


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class OpenAIApi:
    def __init__(
        self,
        gateway: Gateway,
        waiters: ReplyWaiters,
        authenticator: BearerAuthenticator,
        catalog: ModelCatalog,
        *,
        reply_timeout_s: float,
    ) -> None:
        self._gateway = gateway
        self._waiters = waiters
        self._auth = authenticator
        self._catalog = catalog
        self._timeout = reply_timeout_s
        self._embeddings = EmbeddingsEndpoint(
            gateway, waiters, authenticator, reply_timeout_s=reply_timeout_s
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings.handle, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]

    async def models(self, request: Request) -> Response:
        try:
            await self._auth.identify(bearer_token(request.headers.get("authorization")))
        except OpenAIError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": await self._catalog.list_models()})

    async def chat_completions(self, request: Request) -> Response:
        try:
            response = await self._chat(request)
        except OpenAIError as exc:
            REQUESTS.labels("?", str(exc.http_status)).inc()
            if exc.http_status in (400, 413):
                # an unknown field's name is the caller's to choose: not a label value
                unknown = exc.code == "unknown_parameter"
                count_bad_input("stream.openai", "unknown_parameter" if unknown else exc.param)
            return error_response(exc)
        return response

    async def _chat(self, request: Request) -> Response:
        identity = await self._auth.identify(bearer_token(request.headers.get("authorization")))
        try:
            body = await limits.read_body(request, self._gateway.max_body_bytes)
        except limits.BodyTooLarge as exc:
            raise OpenAIError(413, "Request body too large.") from exc
        chat = schema.parse_request(body, self._gateway.limits)
        fields = _request_fields(chat)  # bad input is a 400 before any policy decision
        await self._auth.authorize_model(identity, chat.model)
        request_id = new_request_id()
        event = self._event(request_id, identity, chat.model, fields)
        try:
            self._gateway.check_size(event, raw_bytes=len(body))
        except RecordTooLarge as exc:
            raise OpenAIError(413, exc.message, param="messages") from exc
        waiter = self._waiters.register(request_id)
        handed_over = False
        try:
            try:
                await self._gateway.submit(event)
            except RecordTooLarge as exc:
                raise OpenAIError(413, exc.message, param="messages") from exc
            except TollgateError as exc:
                logger.warning("could not submit request %s: %s", request_id, exc.message)
                raise OpenAIError.unavailable("The gateway cannot accept requests now.") from exc
            first = await schema.next_reply(waiter, self._timeout)
            if isinstance(first, ReplyErrorV1):
                raise schema.error_from_reply(first.error)
            created = int(time.time())
            if chat.stream:
                REQUESTS.labels("true", "200").inc()
                handed_over = True
                return StreamingResponse(
                    self._stream(waiter, first, chat, created),
                    media_type="text/event-stream",
                    headers={"cache-control": "no-cache", "x-request-id": request_id},
                )
            answer = await self._collect(waiter, first, chat, created)
            REQUESTS.labels("false", "200").inc()
            return JSONResponse(answer, headers={"x-request-id": request_id})
        finally:
            if not handed_over:
                self._waiters.discard(request_id)

    def _event(
        self, request_id: str, identity: Identity, model: str, fields: dict[str, Any]
    ) -> ChatRequestV1 | ChatRequestV2:
        """The pipeline's request: v2, or v1 when it uses nothing v1 lacks."""
        try:
            return ChatRequestV2(
                request_id=request_id,
                principal=identity.principal,
                groups=identity.groups,
                allowed_models=identity.allowed_models(),
                tier=identity.tier,
                model=model,
                protocol="openai",
                reply_to=self._gateway.reply_to(),
                **fields,
            ).to_wire()
        except ValidationError as exc:
            problem = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in problem["loc"]) or None
            raise OpenAIError.bad_request(
                f"Invalid request: {problem['msg']}", param=where
            ) from exc
        except TollgateError as exc:
            raise OpenAIError.unavailable(exc.message) from exc

    async def _collect(
        self, waiter: Waiter, reply: Reply, chat: schema.ChatCompletionRequest, created: int
    ) -> dict[str, Any]:
        answer = schema.Answer()
        while True:
            if isinstance(reply, ReplyErrorV1):
                raise schema.error_from_reply(reply.error)
            if isinstance(reply, ReplyDoneV1):
                model = reply.model or chat.model
                return schema.completion(waiter.request_id, created, model, answer, reply)
            if not isinstance(reply, EmbeddingsChunkV1):  # never sent to a chat request
                answer.add(reply)
            reply = await schema.next_reply(waiter, self._timeout)

    async def _stream(
        self, waiter: Waiter, reply: Reply, chat: schema.ChatCompletionRequest, created: int
    ) -> AsyncIterator[bytes]:
        request_id = waiter.request_id
        chunks = schema.Chunks(
            request_id, created, reply.model or chat.model, include_usage=chat.include_usage
        )
        # the events of every reply already here go out in one write: one system call and
        # one wake-up of the client for what arrived together (the role and the first text,
        # the last text and the end)
        events = [_sse(chunks.chunk(delta={"role": "assistant", "content": ""}))]
        try:
            while True:
                for ready in (reply, *waiter.ready()):
                    if _events_of(ready, chunks, events):
                        yield b"".join(events)
                        return
                yield b"".join(events)
                events = []
                try:
                    reply = await schema.next_reply(waiter, self._timeout)
                except OpenAIError as exc:
                    yield _sse(exc.body())
                    return
        finally:
            self._waiters.discard(request_id)
