"""Versioned event contracts carried on Tollgate's Kafka topics.

Each event class names its schema in ``SCHEMA`` (``tollgate.<kind>.v<N>``); producers put it in
the ``tollgate-schema`` header and consumers refuse schemas they do not know, so a contract
change is always a new class with a new version, never a silent edit of an old one. Within a
version unknown fields are ignored, so a newer producer may add optional fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Self
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, JsonValue, NonNegativeInt, model_validator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return str(uuid4())


class Contract(BaseModel):
    """Base of every event: frozen, unknown fields ignored, schema name as a class constant."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    SCHEMA: ClassVar[str]
    #: one record of many in a stream (a reply's chunks): the bus notes its publishing as an
    #: event of the current span and processes it in its producer's trace context without a
    #: span of its own, so a long answer is not a span per chunk (not part of the wire format)
    TRACED_AS_EVENT: ClassVar[bool] = False


# --- pieces ---------------------------------------------------------------------------------


class TextBlock(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    role: Literal["user", "assistant"]
    content: list[TextBlock]


class _Piece(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class TextContent(_Piece):
    type: Literal["text"] = "text"
    text: str


class ImageContent(_Piece):
    """An image, inline (base64 ``data`` with its ``media_type``) or by ``url``."""

    type: Literal["image"] = "image"
    media_type: Literal["image/png", "image/jpeg", "image/gif", "image/webp"] | None = None
    data: str | None = Field(default=None, description="base64, no data: prefix")
    url: str | None = Field(default=None, max_length=8192)
    #: OpenAI's resolution hint; other providers choose the resolution themselves
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImageContent:
        if (self.data is None) == (self.url is None):
            raise ValueError("an image has exactly one of data (base64) or url")
        if self.data is not None and self.media_type is None:
            raise ValueError("an inline image needs its media_type")
        return self


class ToolUseContent(_Piece):
    """The model calling a tool (an assistant turn)."""

    type: Literal["tool_use"] = "tool_use"
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=128)
    input: dict[str, JsonValue] = Field(default_factory=dict)


class ToolResultContent(_Piece):
    """What a tool returned for the call ``tool_use_id`` (a user turn)."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str = ""
    is_error: bool = False


ContentBlock = Annotated[
    TextContent | ImageContent | ToolUseContent | ToolResultContent, Field(discriminator="type")
]


class ChatMessageV2(_Piece):
    role: Literal["user", "assistant"]
    content: tuple[ContentBlock, ...] = Field(min_length=1)

    def text(self) -> str:
        """The message's text blocks, joined."""
        return "".join(b.text for b in self.content if isinstance(b, TextContent))


def _object_schema() -> dict[str, JsonValue]:
    return {"type": "object"}


class ToolSpec(_Piece):
    """A tool the model may call: its input is described by a JSON Schema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    input_schema: dict[str, JsonValue] = Field(default_factory=_object_schema)
    #: the model's arguments must follow the schema exactly (OpenAI's strict function calling)
    strict: bool | None = None


class ToolChoice(_Piece):
    """``auto`` (the model decides), ``none``, ``required`` (some tool) or ``tool`` (``name``)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if (self.mode == "tool") != (self.name is not None):
            raise ValueError("a tool choice names a tool exactly when its mode is 'tool'")
        return self


class ResponseFormat(_Piece):
    """Structured output: any JSON object, or JSON valid against ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    json_schema: dict[str, JsonValue] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is 'json_schema'")
        return self


#: why a model stopped, whatever its provider calls it
StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "content_filtered"]


class ToolCallDelta(_Piece):
    """A piece of a tool call being streamed: the first of a call carries ``id`` and ``name``,
    the following ones more of its ``arguments`` (partial JSON, concatenated in order)."""

    index: NonNegativeInt = Field(description="the call's position among this answer's calls")
    block: NonNegativeInt = Field(description="its content block index in the answer")
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ReplyTo(BaseModel):
    """Where the router sends the reply events of one request."""

    model_config = ConfigDict(frozen=True)
    topic: str
    partition: NonNegativeInt


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ErrorInfo(BaseModel):
    """A typed error as clients see it (``{"error":{"type","message","requestId","details"}}``)."""

    model_config = ConfigDict(frozen=True)
    type: str
    message: str
    retriable: bool = False
    details: dict[str, object] = Field(default_factory=dict)


# --- tollgate.requests -----------------------------------------------------------------------


class _ChatRequestBase(Contract):
    kind: Literal["request"] = "request"
    request_id: str = Field(default_factory=new_request_id)
    principal: str
    groups: tuple[str, ...] = ()
    model: str | None = None
    system: tuple[str, ...] = ()
    max_tokens: NonNegativeInt | None = None
    temperature: float | None = None
    conversation_id: str | None = None
    channel: str | None = Field(
        default=None, description="AppSync channel the replies are published on, if any"
    )
    protocol: Literal["appsync", "openai"] = "appsync"
    reply_to: ReplyTo
    created_at: datetime = Field(default_factory=utcnow)
    #: the models the auth policy allows the caller ("*": any); None: not restricted (an
    #: older edge, or bridge mode). A fallback outside them is never used.
    allowed_models: tuple[str, ...] | None = None
    #: the limit tier the auth policy gives the caller's groups, if it names one
    tier: str | None = None


class ChatRequestV1(_ChatRequestBase):
    """A client's text-only request, as the edge publishes it to ``tollgate.requests``."""

    SCHEMA: ClassVar[str] = "tollgate.request.v1"
    messages: tuple[ChatMessage, ...]


class ChatRequestV2(_ChatRequestBase):
    """A request of the whole model API: content blocks (text, images, tool calls and their
    results), tools, structured output and sampling parameters.

    The edge publishes a request that only needs v1's fields as v1 (:meth:`to_wire`), so
    meters and routers of the previous release keep serving plain chat during an upgrade;
    consumers take both and work on v2 (:meth:`of`)."""

    SCHEMA: ClassVar[str] = "tollgate.request.v2"
    messages: tuple[ChatMessageV2, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    #: provider-specific request fields, passed through as given (Bedrock:
    #: ``additionalModelRequestFields``; OpenAI and Anthropic: extra top-level body fields)
    extras: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def of(cls, request: ChatRequestV1 | ChatRequestV2) -> ChatRequestV2:
        if isinstance(request, ChatRequestV2):
            return request
        fields: dict[str, Any] = dict(request)
        fields["messages"] = tuple(upgrade_message(m) for m in request.messages)
        return cls(**fields)

    def needs_v2(self) -> bool:
        """Whether this request uses anything :class:`ChatRequestV1` cannot carry."""
        if self.tools or self.stop or self.extras:
            return True
        optional = (self.tool_choice, self.response_format, self.top_p, self.seed)
        if any(value is not None for value in optional):
            return True
        return not all(isinstance(b, TextContent) for m in self.messages for b in m.content)

    def to_wire(self) -> ChatRequestV1 | ChatRequestV2:
        """v1 when nothing but v1's fields is used, else this request."""
        if self.needs_v2():
            return self
        fields: dict[str, Any] = {k: v for k, v in self if k in ChatRequestV1.model_fields}
        fields["messages"] = tuple(
            ChatMessage(
                role=m.role,
                content=[TextBlock(text=b.text) for b in m.content if isinstance(b, TextContent)],
            )
            for m in self.messages
        )
        return ChatRequestV1(**fields)


def upgrade_message(message: ChatMessage) -> ChatMessageV2:
    return ChatMessageV2(
        role=message.role,
        content=tuple(TextContent(text=b.text) for b in message.content) or (TextContent(text=""),),
    )


class EmbeddingRequestV1(Contract):
    """A client's embeddings request (``POST /v1/embeddings``), on ``tollgate.requests`` beside
    chat requests: the same identity, policy, metering and reply addressing, with inputs
    (texts, or token arrays for providers that take them) in place of messages."""

    SCHEMA: ClassVar[str] = "tollgate.embedding_request.v1"
    kind: Literal["embedding_request"] = "embedding_request"
    request_id: str = Field(default_factory=new_request_id)
    principal: str
    groups: tuple[str, ...] = ()
    model: str | None = None
    inputs: tuple[str | tuple[NonNegativeInt, ...], ...] = Field(min_length=1)
    #: the length the client asked the vectors to have, where the model can shorten them
    dimensions: Annotated[int, Field(ge=1)] | None = None
    #: what the texts are for, where the model distinguishes (Cohere's ``input_type``)
    input_type: str | None = None
    channel: str | None = None
    conversation_id: str | None = None
    protocol: Literal["appsync", "openai"] = "openai"
    reply_to: ReplyTo
    created_at: datetime = Field(default_factory=utcnow)
    allowed_models: tuple[str, ...] | None = None
    tier: str | None = None
    #: chat fields the meter reads from any request: an embedding produces no output
    max_tokens: Literal[0] = 0


#: any request on ``tollgate.requests``
AnyRequest = ChatRequestV1 | ChatRequestV2 | EmbeddingRequestV1


# --- tollgate.admitted -----------------------------------------------------------------------


class _ChatAdmission(Contract):
    """The meter's decision to let a chat request through, with what it reserved."""

    kind: Literal["admission"] = "admission"
    request: ChatRequestV1 | ChatRequestV2
    reserved_input_tokens: NonNegativeInt
    reserved_output_tokens: NonNegativeInt
    admitted_at: datetime = Field(default_factory=utcnow)
    #: the latest moment the meter may release the reservation (a lower bound, counted from
    #: the request's creation): the router starts nothing it could not finish by then.
    #: Optional and additive: an admission without it is judged by its age alone
    reservation_expires_at: datetime | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id


class AdmissionV1(_ChatAdmission):
    """The admission of a :class:`ChatRequestV1`."""

    SCHEMA: ClassVar[str] = "tollgate.admission.v1"
    request: ChatRequestV1


class AdmissionV2(_ChatAdmission):
    """The admission of a :class:`ChatRequestV2`."""

    SCHEMA: ClassVar[str] = "tollgate.admission.v2"
    request: ChatRequestV2


class EmbeddingAdmissionV1(Contract):
    """The meter's admission of an embeddings request: input tokens reserved, no output."""

    SCHEMA: ClassVar[str] = "tollgate.embedding_admission.v1"
    kind: Literal["embedding_admission"] = "embedding_admission"
    request: EmbeddingRequestV1
    reserved_input_tokens: NonNegativeInt
    reserved_output_tokens: Literal[0] = 0
    admitted_at: datetime = Field(default_factory=utcnow)

    @property
    def request_id(self) -> str:
        return self.request.request_id


# --- tollgate.replies ------------------------------------------------------------------------


class _ReplyBase(Contract):
    request_id: str
    principal: str
    seq: NonNegativeInt = Field(description="position in the request's reply stream, from 0")
    channel: str | None = None
    conversation_id: str | None = None
    model: str | None = None

    @classmethod
    def answering(cls, request: AnyRequest, *, seq: int, model: str | None, **fields: Any) -> Self:
        """This reply to ``request``: who asked, on which channel and in which conversation
        come from the request; ``fields`` are the reply's own."""
        return cls(
            request_id=request.request_id,
            principal=request.principal,
            seq=seq,
            channel=request.channel,
            conversation_id=request.conversation_id,
            model=model,
            **fields,
        )


class ReplyChunkV1(_ReplyBase):
    SCHEMA: ClassVar[str] = "tollgate.reply.v1"
    TRACED_AS_EVENT: ClassVar[bool] = True
    kind: Literal["chunk"] = "chunk"
    text: str


class ReplyDoneV1(_ReplyBase):
    SCHEMA: ClassVar[str] = "tollgate.reply.v1"
    kind: Literal["done"] = "done"
    stop_reason: str = "end_turn"
    usage: Usage
    latency_ms: NonNegativeInt = 0


class ReplyErrorV1(_ReplyBase):
    SCHEMA: ClassVar[str] = "tollgate.reply.v1"
    kind: Literal["error"] = "error"
    error: ErrorInfo


ReplyV1 = Annotated[ReplyChunkV1 | ReplyDoneV1 | ReplyErrorV1, Field(discriminator="kind")]
REPLY_SCHEMA = "tollgate.reply.v1"


class ReplyChunkV2(_ReplyBase):
    """A piece of the answer to a :class:`ChatRequestV2`: text, or a tool call's delta.
    A v2 request's answer is v2 chunks, then a v1 done or error (their shape is unchanged);
    a v1 request's answer stays all v1, so an edge of the previous release reads it."""

    SCHEMA: ClassVar[str] = "tollgate.reply.v2"
    TRACED_AS_EVENT: ClassVar[bool] = True
    kind: Literal["chunk"] = "chunk"
    text: str = ""
    tool_call: ToolCallDelta | None = None


REPLY_SCHEMA_V2 = "tollgate.reply.v2"


class EmbeddingsChunkV1(_ReplyBase):
    """Some of an embeddings request's vectors, in input order from ``first_index``; a
    request's vectors come in as many chunks as keep each record under the size limit, and
    its reply stream ends, as a chat's does, with a ``done`` (the usage) or an ``error``.

    Each vector is the base64 of its little-endian float32 values: the OpenAI API's own
    ``encoding_format: base64``, a third of the size of JSON numbers."""

    SCHEMA: ClassVar[str] = "tollgate.embeddings.v1"
    kind: Literal["embeddings"] = "embeddings"
    first_index: NonNegativeInt
    vectors: tuple[str, ...]


# --- tollgate.usage --------------------------------------------------------------------------


class UsageRecordV1(Contract):
    """What one request really consumed; the meter settles its reservation with it."""

    SCHEMA: ClassVar[str] = "tollgate.usage.v1"
    kind: Literal["usage"] = "usage"
    request_id: str
    principal: str
    model: str
    provider: str
    usage: Usage
    cost_usd: Decimal = Decimal(0)
    status: Literal["ok", "error", "cancelled"] = "ok"
    occurred_at: datetime = Field(default_factory=utcnow)
    #: the provider reported no usage: the router counted the tokens itself (``estimated_by``
    #: names how: a tokenizer file, or ``estimate``)
    estimated: bool = False
    estimated_by: str | None = None


# --- tollgate.logs ---------------------------------------------------------------------------


class RequestLogV1(Contract):
    """One completion record per request: the row analytics and dashboards are built from."""

    SCHEMA: ClassVar[str] = "tollgate.log.v1"
    kind: Literal["log"] = "log"
    request_id: str
    principal: str
    groups: tuple[str, ...] = ()
    model: str
    provider: str
    status: Literal["ok", "error", "rejected", "cancelled"]
    error_type: str | None = None
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cost_usd: Decimal = Decimal(0)
    cache_hit: bool = False
    retries: NonNegativeInt = 0
    fallback_used: bool = False
    time_to_first_token_ms: NonNegativeInt | None = None
    latency_ms: NonNegativeInt = 0
    conversation_id: str | None = None
    protocol: Literal["appsync", "openai"] = "appsync"
    started_at: datetime
    finished_at: datetime = Field(default_factory=utcnow)
    #: what was asked of the model; older producers sent chat requests only
    operation: Literal["chat", "embeddings"] = "chat"
    #: the token figures were counted by the router, the provider having reported none
    usage_estimated: bool = False
    usage_estimated_by: str | None = None

    @classmethod
    def of_request(
        cls, request: AnyRequest, *, started_at: datetime | None = None, **fields: Any
    ) -> Self:
        """The log record of ``request``: who asked, how and for what come from the request
        (``started_at`` from its creation unless given); ``fields`` are the outcome."""
        return cls(
            request_id=request.request_id,
            principal=request.principal,
            groups=request.groups,
            conversation_id=request.conversation_id,
            protocol=request.protocol,
            started_at=started_at or request.created_at,
            operation="embeddings" if isinstance(request, EmbeddingRequestV1) else "chat",
            **fields,
        )


# --- tollgate.audit --------------------------------------------------------------------------


class AuditEventV1(Contract):
    """One security-relevant decision or change made by the auth service."""

    SCHEMA: ClassVar[str] = "tollgate.audit.v1"
    kind: Literal["audit"] = "audit"
    event_id: str = Field(default_factory=new_request_id)
    action: str = Field(description="authorize, api_key.create, api_key.revoke, policy.update")
    outcome: Literal["allow", "deny"]
    principal: str | None = None
    groups: tuple[str, ...] = ()
    credential: Literal["jwt", "api_key", "admin_token", "none"] = "none"
    operation: str | None = None
    channel: str | None = None
    model: str | None = None
    subject: str | None = Field(default=None, description="what was changed, e.g. a key id")
    reason: str | None = Field(default=None, description="the denial's error type")
    at: datetime = Field(default_factory=utcnow)


__all__ = [
    "REPLY_SCHEMA",
    "REPLY_SCHEMA_V2",
    "AdmissionV1",
    "AdmissionV2",
    "AnyRequest",
    "AuditEventV1",
    "ChatMessage",
    "ChatMessageV2",
    "ChatRequestV1",
    "ChatRequestV2",
    "ContentBlock",
    "Contract",
    "EmbeddingAdmissionV1",
    "EmbeddingRequestV1",
    "EmbeddingsChunkV1",
    "ErrorInfo",
    "ImageContent",
    "ReplyChunkV1",
    "ReplyChunkV2",
    "ReplyDoneV1",
    "ReplyErrorV1",
    "ReplyTo",
    "ReplyV1",
    "RequestLogV1",
    "ResponseFormat",
    "StopReason",
    "TextBlock",
    "TextContent",
    "ToolCallDelta",
    "ToolChoice",
    "ToolResultContent",
    "ToolSpec",
    "ToolUseContent",
    "Usage",
    "UsageRecordV1",
    "new_request_id",
    "upgrade_message",
    "utcnow",
]
