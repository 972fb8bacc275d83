"""OpenAI chat-completion payloads: the request we accept and the objects we answer with.

Only text chat is supported: ``system``/``developer`` messages become the system prompt,
``user``/``assistant`` messages the conversation; content is a string or a list of
``{"type":"text","text"}`` parts. Unknown request fields are ignored, as OpenAI clients send
many optional ones.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tollgate_core.contracts import ChatMessage, ErrorInfo, ReplyDoneV1, TextBlock
from tollgate_core.limits import Limits
from tollgate_stream.chat import NO_CONTROL_CHARACTERS
from tollgate_stream.errors import OpenAIError

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def system(self) -> tuple[str, ...]:
        return tuple(m.text() for m in self.messages if m.role in ("system", "developer"))

    def conversation(self) -> tuple[ChatMessage, ...]:
        turns = tuple(
            ChatMessage(role=m.role, content=[TextBlock(text=m.text())])
            for m in self.messages
            if m.role in ("user", "assistant")
        )
        if not turns:
            raise OpenAIError.bad_request(
                "messages must hold at least one user message", param="messages"
            )
        return turns


def parse_request(body: bytes, limits: Limits) -> ChatCompletionRequest:
    try:
        chat = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OpenAIError.bad_request(
            f"Invalid request: {where or 'body'}: {first['msg']}",
            param=where or None,
        ) from exc
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(chat, name)
        if value is not None and value > limits.max_tokens:
            raise OpenAIError.bad_request(
                f"Invalid request: {name}: must be at most {limits.max_tokens}", param=name
            )
    return chat


# --- answers -------------------------------------------------------------------------------


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def usage_object(done: ReplyDoneV1) -> dict[str, int]:
    return {
        "prompt_tokens": done.usage.input_tokens,
        "completion_tokens": done.usage.output_tokens,
        "total_tokens": done.usage.total_tokens,
    }


def chunk(
    request_id: str,
    created: int,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        body["usage"] = usage
    return body


def completion(
    request_id: str, created: int, model: str, text: str, done: ReplyDoneV1
) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(done.stop_reason),
            }
        ],
        "usage": usage_object(done),
    }


def _retry_after(error: ErrorInfo) -> object:
    """The meter says ``retry_after_s``; older or foreign producers ``retry_after``."""
    for key in ("retry_after_s", "retry_after", "retryAfter"):
        if key in error.details:
            return error.details[key]
    return None


def error_from_reply(error: ErrorInfo) -> OpenAIError:
    """The OpenAI error (status, type, code) for a pipeline error reply."""
    kind = error.type
    if kind == "token_limit_exceeded":
        return OpenAIError(
            429,
            error.message,
            type_="rate_limit_error",
            code="token_limit_exceeded",
            retry_after=_seconds(_retry_after(error)),
        )
    if kind == "model_not_found":
        return OpenAIError(404, error.message, code="model_not_found", param="model")
    if kind == "model_not_allowed":
        return OpenAIError.forbidden(error.message, code="model_not_allowed")
    if kind == "unauthorized":
        return OpenAIError.unauthorized(error.message)
    if kind == "validation_error":
        param = error.details.get("param")
        return OpenAIError.bad_request(
            error.message, param=param if isinstance(param, str) else None
        )
    if kind in (
        "provider_throttled",
        "service_unavailable",
        "dependency_unavailable",
        "request_expired",
    ):
        return OpenAIError.unavailable(error.message, code=kind)
    return OpenAIError(500, error.message, type_="server_error", code=kind)


def _seconds(value: object, default: int = 60) -> int:
    """Whole seconds (at least 1) for a ``Retry-After`` header from a reply's details."""
    try:
        return max(1, math.ceil(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default
