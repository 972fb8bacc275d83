"""The chat payloads on AppSync channels, compatible with the AWS serverless AI gateway sample.

Inbound (published to ``/Inbound-Messages/<sub>[/…]``)::

    {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
     "modelId": "…", "conversationId": "…", "system": "…", "maxTokens": 512}

Converse-shaped equivalents of the whole model API are accepted too: content blocks
``{"image": {"format", "source": {"bytes"}}}``, ``{"toolUse": {"toolUseId", "name", "input"}}``
and ``{"toolResult": {"toolUseId", "content": [{"text"} | {"json"}], "status"}}``;
``toolConfig`` (``tools: [{"toolSpec": {"name", "description", "inputSchema": {"json"}}}]``,
``toolChoice: {"auto"|"any"|"tool": …}``); ``inferenceConfig`` (``maxTokens``,
``temperature``, ``topP``, ``stopSequences``); ``additionalModelRequestFields``.

Outbound (received on ``/Outbound-Messages/<sub>[/…]``): Bedrock ConverseStream-shaped events
with ``conversationId`` and ``requestId`` added — a tool call as ``contentBlockStart`` with
``start.toolUse`` then ``contentBlockDelta`` with ``delta.toolUse.input`` pieces, as Bedrock
streams it; errors as ``{"error": {"type", "message", "requestId", "details"}}``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from tollgate_core.contracts import (
    ChatMessageV2,
    ReplyChunkV1,
    ReplyChunkV2,
    ReplyDoneV1,
    ReplyErrorV1,
    ToolChoice,
    ToolSpec,
)
from tollgate_core.errors import RequestError
from tollgate_stream import converse

#: identifiers (a model id, a conversation id) are printable: no NUL, no other control
#: character, which Postgres, logs and headers downstream could not carry
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class InboundChat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    messages: tuple[ChatMessageV2, ...] = Field(min_length=1)
    model_id: str | None = Field(
        default=None, alias="modelId", max_length=256, pattern=NO_CONTROL_CHARACTERS
    )
    conversation_id: str | None = Field(
        default=None, alias="conversationId", max_length=256, pattern=NO_CONTROL_CHARACTERS
    )
    system: tuple[str, ...] = ()
    max_tokens: int | None = Field(default=None, alias="maxTokens", ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: tuple[str, ...] = Field(default=(), max_length=4)
    tools: tuple[ToolSpec, ...] = Field(default=(), alias="toolConfig")
    tool_choice: ToolChoice | None = None
    extras: dict[str, JsonValue] = Field(default_factory=dict, alias="additionalModelRequestFields")

    @model_validator(mode="before")
    @classmethod
    def _converse(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return converse.normalize(value)

    @field_validator("system", mode="before")
    @classmethod
    def _system(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):  # Bedrock style: [{"text": "…"}]
            return tuple(v["text"] if isinstance(v, dict) and "text" in v else v for v in value)
        return value


def parse_inbound(event: str) -> InboundChat:
    """Parse one published event (a JSON string) into a chat request."""
    try:
        return InboundChat.model_validate_json(event)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise RequestError(
            f"invalid chat event: {where}: {first['msg']}", details={"field": where}
        ) from exc


def conversation_of(event: object) -> str | None:
    """The ``conversationId`` of a published event, if it names a usable one: an event that
    was refused is still answered in its conversation."""
    if not isinstance(event, str):
        return None
    try:
        payload = json.loads(event)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    value = payload.get("conversationId")
    if isinstance(value, str) and len(value) <= 256 and re.match(NO_CONTROL_CHARACTERS, value):
        return value
    return None


def outbound_events(
    reply: ReplyChunkV1 | ReplyChunkV2 | ReplyDoneV1 | ReplyErrorV1,
) -> list[dict[str, Any]]:
    """The ConverseStream-shaped events one reply becomes on the outbound channel."""
    common: dict[str, Any] = {"requestId": reply.request_id}
    if reply.conversation_id is not None:
        common["conversationId"] = reply.conversation_id
    if isinstance(reply, ReplyChunkV1 | ReplyChunkV2):
        events: list[dict[str, Any]] = []
        if reply.seq == 0:
            events.append({"messageStart": {"role": "assistant"}, **common})
        events += [{**e, **common} for e in converse.chunk_events(reply)]
        return events
    if isinstance(reply, ReplyDoneV1):
        usage = reply.usage
        return [
            {"messageStop": {"stopReason": reply.stop_reason}, **common},
            {
                "metadata": {
                    "usage": {
                        "inputTokens": usage.input_tokens,
                        "outputTokens": usage.output_tokens,
                        "totalTokens": usage.total_tokens,
                    },
                    "metrics": {"latencyMs": reply.latency_ms},
                },
                **common,
            },
        ]
    return [
        error_event(
            reply.error.type,
            reply.error.message,
            reply.request_id,
            reply.error.details,
            reply.conversation_id,
        )
    ]


def error_event(
    type_: str,
    message: str,
    request_id: str | None,
    details: dict[str, Any] | None = None,
    conversation_id: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "error": {
            "type": type_,
            "message": message,
            "requestId": request_id,
            "details": details or {},
        }
    }
    if conversation_id is not None:
        event["conversationId"] = conversation_id
    return event


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
