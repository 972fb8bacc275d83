"""Versioned event contracts carried on Tollgate's Kafka topics.

Each event class names its schema in ``SCHEMA`` (``tollgate.<kind>.v<N>``); producers put it in
the ``tollgate-schema`` header and consumers refuse schemas they do not know, so a contract
change is always a new class with a new version, never a silent edit of an old one. Within a
version unknown fields are ignored, so a newer producer may add optional fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, ClassVar, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt


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


class ChatRequestV1(Contract):
    """A client's request, as the edge publishes it to ``tollgate.requests``."""

    SCHEMA: ClassVar[str] = "tollgate.request.v1"
    kind: Literal["request"] = "request"
    request_id: str = Field(default_factory=new_request_id)
    principal: str
    groups: tuple[str, ...] = ()
    model: str | None = None
    messages: tuple[ChatMessage, ...]
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


# --- tollgate.admitted -----------------------------------------------------------------------


class AdmissionV1(Contract):
    """The meter's decision to let a request through, with what it reserved."""

    SCHEMA: ClassVar[str] = "tollgate.admission.v1"
    kind: Literal["admission"] = "admission"
    request: ChatRequestV1
    reserved_input_tokens: NonNegativeInt
    reserved_output_tokens: NonNegativeInt
    admitted_at: datetime = Field(default_factory=utcnow)

    @property
    def request_id(self) -> str:
        return self.request.request_id


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
    "AdmissionV1",
    "AuditEventV1",
    "ChatMessage",
    "ChatRequestV1",
    "Contract",
    "EmbeddingAdmissionV1",
    "EmbeddingRequestV1",
    "EmbeddingsChunkV1",
    "ErrorInfo",
    "ReplyChunkV1",
    "ReplyDoneV1",
    "ReplyErrorV1",
    "ReplyTo",
    "ReplyV1",
    "RequestLogV1",
    "TextBlock",
    "Usage",
    "UsageRecordV1",
    "new_request_id",
    "utcnow",
]
