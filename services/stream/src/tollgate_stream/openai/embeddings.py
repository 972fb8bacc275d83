"""``POST /v1/embeddings``, OpenAI's shape, through the same pipeline as chat.

The request — ``input`` as a string, a list of strings, a token array or a list of token
arrays; ``encoding_format`` ``float`` or ``base64``; ``dimensions`` — becomes an
``EmbeddingRequestV1``: the same authentication and model policy, the same meter admission
(input tokens), routed by the router to the catalog's ``kind: embedding`` model. Its replies
are vector chunks (base64 little-endian float32, OpenAI's own ``base64`` encoding, passed
through as is) and a done with the usage, or an error. Fields OpenAI's API does not define
are refused, as OpenAI refuses them, rather than silently ignored.
"""

from __future__ import annotations

import base64
import logging
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tollgate_core.contracts import (
    EmbeddingRequestV1,
    EmbeddingsChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    new_request_id,
)
from tollgate_core.errors import RecordTooLarge, TollgateError
from tollgate_core.limits import count_bad_input
from tollgate_stream import limits
from tollgate_stream.chat import NO_CONTROL_CHARACTERS
from tollgate_stream.errors import OpenAIError
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import Identity
from tollgate_stream.openai import schema
from tollgate_stream.openai.auth import BearerAuthenticator, bearer_token
from tollgate_stream.waiters import ReplyWaiters, Waiter

logger = logging.getLogger(__name__)

#: OpenAI's own limit of inputs per request
MAX_INPUTS = 2048
#: OpenAI's token ids are below 2**31; a larger one is no token of any tokenizer
MAX_TOKEN_ID = 2**31 - 1

InputType = Literal["search_document", "search_query", "classification", "clustering"]
Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
        | Tokens
        | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    user: str | None = Field(default=None, max_length=256)
    #: not OpenAI's: what the texts are for, for models that ask (Cohere's ``input_type``)
    input_type: (
        Literal["search_document", "search_query", "classification", "clustering"] | None
    ) = None

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        value = self.input
        if isinstance(value, str):
            return (value,)
        out: list[str | tuple[int, ...]] = []
        for item in value:
            if isinstance(item, int):  # one token array
                return (tuple(i for i in value if isinstance(i, int)),)
            out.append(item if isinstance(item, str) else tuple(item))
        return tuple(out)


def parse(body: bytes) -> EmbeddingsRequest:
    try:
        return EmbeddingsRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = str(first["loc"][0]) if first["loc"] else "body"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "Unrecognized request argument supplied"
        elif where == "input":
            message = "must be a non-empty string, array of strings or array of token arrays"
        raise OpenAIError.bad_request(f"Invalid request: {where}: {message}", param=where) from exc


def vector_of(encoded: str, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return encoded
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def response(
    chunks: list[EmbeddingsChunkV1], done: ReplyDoneV1, model: str, encoding_format: str
) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for chunk in sorted(chunks, key=lambda c: c.first_index):
        for offset, encoded in enumerate(chunk.vectors):
            data.append(
                {
                    "object": "embedding",
                    "index": chunk.first_index + offset,
                    "embedding": vector_of(encoded, encoding_format),
                }
            )
    tokens = done.usage.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": done.model or model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class EmbeddingsEndpoint:
    def __init__(
        self,
        gateway: Gateway,
        waiters: ReplyWaiters,
        authenticator: BearerAuthenticator,
        *,
        reply_timeout_s: float,
    ) -> None:
        self._gateway = gateway
        self._waiters = waiters
        self._auth = authenticator
        self._timeout = reply_timeout_s

    async def handle(self, request: Request) -> Response:
        try:
            return await self._embeddings(request)
        except OpenAIError as exc:
            if exc.http_status in (400, 413):
                count_bad_input("stream.openai.embeddings", exc.param)
            headers = {"retry-after": str(exc.retry_after)} if exc.retry_after else None
            return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)

    async def _embeddings(self, request: Request) -> Response:
        identity = await self._auth.identify(bearer_token(request.headers.get("authorization")))
        try:
            body = await limits.read_body(request, self._gateway.max_body_bytes)
        except limits.BodyTooLarge as exc:
            raise OpenAIError(413, "Request body too large.") from exc
        asked = parse(body)
        await self._auth.authorize_model(identity, asked.model)
        event = self._event(identity, asked)
        try:
            self._gateway.check_size(event, raw_bytes=len(body))
        except RecordTooLarge as exc:
            raise OpenAIError(413, exc.message, param="input") from exc
        waiter = self._waiters.register(event.request_id)
        try:
            await self._submit(event)
            answer = await self._collect(waiter, asked)
        finally:
            self._waiters.discard(event.request_id)
        return JSONResponse(answer, headers={"x-request-id": event.request_id})

    def _event(self, identity: Identity, asked: EmbeddingsRequest) -> EmbeddingRequestV1:
        try:
            return EmbeddingRequestV1(
                request_id=new_request_id(),
                principal=identity.principal,
                groups=identity.groups,
                allowed_models=identity.allowed_models(),
                tier=identity.tier,
                model=asked.model,
                inputs=asked.inputs(),
                dimensions=asked.dimensions,
                input_type=asked.input_type,
                reply_to=self._gateway.reply_to(),
            )
        except TollgateError as exc:  # no reply partition yet
            raise OpenAIError.unavailable(exc.message) from exc

    async def _submit(self, event: EmbeddingRequestV1) -> None:
        try:
            await self._gateway.submit(event)
        except RecordTooLarge as exc:
            raise OpenAIError(413, exc.message, param="input") from exc
        except TollgateError as exc:
            logger.warning("could not submit request %s: %s", event.request_id, exc.message)
            raise OpenAIError.unavailable("The gateway cannot accept requests now.") from exc

    async def _collect(self, waiter: Waiter, asked: EmbeddingsRequest) -> dict[str, Any]:
        chunks: list[EmbeddingsChunkV1] = []
        while True:
            reply = await schema.next_reply(waiter, self._timeout)
            if isinstance(reply, ReplyErrorV1):
                raise schema.error_from_reply(reply.error)
            if isinstance(reply, ReplyDoneV1):
                return response(chunks, reply, asked.model, asked.encoding_format)
            if isinstance(reply, EmbeddingsChunkV1):
                chunks.append(reply)
