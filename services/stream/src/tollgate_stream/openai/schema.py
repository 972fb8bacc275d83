"""OpenAI chat-completion payloads: the request we accept and the objects we answer with.

``system``/``developer`` messages become the system prompt; ``user`` content is a string or
``text`` and ``image_url`` parts (a URL or a ``data:`` URL); ``assistant`` messages may carry
``tool_calls``; ``tool`` messages answer them. ``tools``, ``tool_choice``, ``response_format``,
``stop``, ``temperature``, ``top_p``, ``seed`` and ``max_(completion_)tokens`` are carried to
the model; ``provider_extras`` (an object; with the SDK, ``extra_body``) is passed to the
provider as it is. Any other field is refused, as OpenAI does, rather than ignored: a
parameter that silently does nothing is a bug the caller cannot see.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from tollgate_core.contracts import ErrorInfo, ReplyChunkV1, ReplyChunkV2, ReplyDoneV1
from tollgate_core.limits import Limits
from tollgate_stream.chat import NO_CONTROL_CHARACTERS
from tollgate_stream.errors import OpenAIError
from tollgate_stream.waiters import Reply, Waiter, WaiterOverflow

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=128)
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)
    refusal: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchema(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, JsonValue] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    provider_extras: dict[str, JsonValue] | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def system(self) -> tuple[str, ...]:
        return tuple(m.text() for m in self.messages if m.role in ("system", "developer"))

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def _first_error(exc: ValidationError) -> OpenAIError:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return OpenAIError(
            400,
            f"Unrecognized request argument supplied: {where}",
            param=where,
            code="unknown_parameter",
        )
    return OpenAIError.bad_request(
        f"Invalid request: {where or 'body'}: {first['msg']}", param=where or None
    )


def parse_request(body: bytes, limits: Limits) -> ChatCompletionRequest:
    try:
        chat = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _first_error(exc) from exc
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(chat, name)
        if value is not None and value > limits.max_tokens:
            raise OpenAIError.bad_request(
                f"Invalid request: {name}: must be at most {limits.max_tokens}", param=name
            )
    if len(chat.stop_sequences()) > 4:
        raise OpenAIError.bad_request("Invalid request: stop: at most 4 sequences", param="stop")
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


@dataclass(frozen=True, slots=True)
class Chunks:
    """The ``chat.completion.chunk`` objects of one streamed answer; with ``include_usage``
    (``stream_options``) each carries ``usage``, null but on the last."""

    request_id: str
    created: int
    model: str
    include_usage: bool = False

    def chunk(
        self,
        *,
        delta: dict[str, Any] | None = None,
        finish: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id(self.request_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            body["usage"] = usage
        return body


def delta_of(reply: ReplyChunkV1 | ReplyChunkV2) -> dict[str, Any]:
    """A streamed chunk's ``delta``: text, or a piece of a tool call (its first piece
    carries the call's id, type and function name)."""
    call = reply.tool_call if isinstance(reply, ReplyChunkV2) else None
    if call is None:
        return {"content": reply.text}
    function: dict[str, str] = {"arguments": call.arguments}
    item: dict[str, Any] = {"index": call.index, "function": function}
    if call.id is not None:
        item["id"] = call.id
        item["type"] = "function"
    if call.name is not None:
        function["name"] = call.name
    return {"tool_calls": [item]}


class Answer:
    """A non-streamed answer gathered from its chunks: text and whole tool calls."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}

    def add(self, reply: ReplyChunkV1 | ReplyChunkV2) -> None:
        call = reply.tool_call if isinstance(reply, ReplyChunkV2) else None
        if call is None:
            self.parts.append(reply.text)
            return
        entry = self.calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
        entry["id"] = call.id or entry["id"]
        entry["name"] = call.name or entry["name"]
        entry["arguments"] += call.arguments

    def message(self) -> dict[str, Any]:
        text = "".join(self.parts)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not self.calls else None,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"] or "{}"},
                }
                for _, c in sorted(self.calls.items())
            ]
        return message


def completion(
    request_id: str, created: int, model: str, answer: Answer, done: ReplyDoneV1
) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer.message(),
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


async def next_reply(waiter: Waiter, timeout_s: float) -> Reply:
    """The request's next reply, or the OpenAI error for one that did not come in time or
    for a reply stream that overflowed."""
    try:
        async with asyncio.timeout(timeout_s):
            return await waiter.next()
    except TimeoutError as exc:
        raise OpenAIError(
            504, "The model did not answer in time.", type_="server_error", code="timeout"
        ) from exc
    except WaiterOverflow as exc:
        raise OpenAIError(500, "The reply stream was interrupted.", type_="server_error") from exc


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
