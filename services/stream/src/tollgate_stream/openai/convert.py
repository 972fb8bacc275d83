"""An OpenAI chat-completion request in the contract's terms: content blocks, tools, tool
choice and structured output. Tool messages become ``tool_result`` blocks of a user turn (as
Anthropic and Bedrock require), merged with the user turn that follows them."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, cast, get_args

from tollgate_core.contracts import (
    ChatMessageV2,
    ContentBlock,
    ImageContent,
    ResponseFormat,
    TextContent,
    ToolChoice,
    ToolResultContent,
    ToolSpec,
    ToolUseContent,
)
from tollgate_stream.errors import OpenAIError
from tollgate_stream.openai.schema import ChatCompletionRequest, ImagePart, Message, TextPart

_DATA_URL = re.compile(r"^data:(?P<type>image/[a-z+.-]+);base64,(?P<data>.*)$", re.DOTALL)
_MEDIA_TYPES = frozenset(get_args(get_args(ImageContent.model_fields["media_type"].annotation)[0]))


def image_block(part: ImagePart, where: str) -> ImageContent:
    url = part.image_url.url
    if not url.startswith("data:"):
        if not url.startswith(("https://", "http://")):
            raise OpenAIError.bad_request(
                f"Invalid request: {where}: an image URL is https:// or a data: URL", param=where
            )
        return ImageContent(url=url)
    match = _DATA_URL.match(url)
    if match is None or match["type"] not in _MEDIA_TYPES:
        raise OpenAIError.bad_request(
            f"Invalid request: {where}: a data URL of a PNG, JPEG, GIF or WebP image, base64",
            param=where,
        )
    try:
        base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OpenAIError.bad_request(
            f"Invalid request: {where}: the image is not valid base64", param=where
        ) from exc
    return ImageContent(media_type=cast(Any, match["type"]), data=match["data"])


def _user_blocks(message: Message, where: str) -> list[ContentBlock]:
    if message.content is None or isinstance(message.content, str):
        return [TextContent(text=message.content or "")]
    blocks: list[ContentBlock] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            blocks.append(TextContent(text=part.text))
        else:
            blocks.append(image_block(part, f"{where}.content.{j}"))
    return blocks


def _assistant_blocks(message: Message, where: str) -> list[ContentBlock]:
    blocks: list[ContentBlock] = []
    if isinstance(message.content, list) and any(
        not isinstance(p, TextPart) for p in message.content
    ):
        raise OpenAIError.bad_request(
            f"Invalid request: {where}.content: an assistant message holds text only",
            param=f"{where}.content",
        )
    if message.text():
        blocks.append(TextContent(text=message.text()))
    for j, call in enumerate(message.tool_calls or ()):
        arguments = f"{where}.tool_calls.{j}.function.arguments"
        try:
            data = json.loads(call.function.arguments or "{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OpenAIError.bad_request(
                f"Invalid request: {arguments}: must be a JSON object", param=arguments
            )
        blocks.append(ToolUseContent(id=call.id, name=call.function.name, input=data))
    if not blocks:
        raise OpenAIError.bad_request(
            f"Invalid request: {where}: an assistant message needs content or tool_calls",
            param=where,
        )
    return blocks


def _tool_result(message: Message, where: str) -> ToolResultContent:
    if message.tool_call_id is None:
        raise OpenAIError.bad_request(
            f"Invalid request: {where}.tool_call_id: a tool message names the call it answers",
            param=f"{where}.tool_call_id",
        )
    if isinstance(message.content, list) and any(
        not isinstance(p, TextPart) for p in message.content
    ):
        raise OpenAIError.bad_request(
            f"Invalid request: {where}.content: a tool result holds text only",
            param=f"{where}.content",
        )
    return ToolResultContent(tool_use_id=message.tool_call_id, content=message.text())


def conversation(chat: ChatCompletionRequest) -> tuple[ChatMessageV2, ...]:
    turns: list[tuple[str, list[ContentBlock]]] = []
    for i, message in enumerate(chat.messages):
        where = f"messages.{i}"
        if message.role in ("system", "developer"):
            continue
        if message.role == "assistant":
            turns.append(("assistant", _assistant_blocks(message, where)))
            continue
        if message.role == "tool":
            blocks: list[ContentBlock] = [_tool_result(message, where)]
        else:
            blocks = _user_blocks(message, where)
        previous = turns[-1] if turns else None
        if previous and previous[0] == "user" and isinstance(previous[1][-1], ToolResultContent):
            previous[1].extend(blocks)  # one user turn: the results, then what follows
        else:
            turns.append(("user", blocks))
    if not any(role == "user" for role, _ in turns):
        raise OpenAIError.bad_request(
            "messages must hold at least one user message", param="messages"
        )
    return tuple(ChatMessageV2(role=cast(Any, role), content=tuple(b)) for role, b in turns)


def tools(chat: ChatCompletionRequest) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(
            name=t.function.name,
            description=t.function.description,
            input_schema=t.function.parameters or {"type": "object"},
        )
        for t in chat.tools or ()
    )


def tool_choice(chat: ChatCompletionRequest) -> ToolChoice | None:
    choice = chat.tool_choice
    if choice is None:
        return None
    if isinstance(choice, str):
        return ToolChoice(mode=choice)
    names = {t.function.name for t in chat.tools or ()}
    if choice.function.name not in names:
        raise OpenAIError.bad_request(
            f"Invalid request: tool_choice: no tool named {choice.function.name!r} in tools",
            param="tool_choice",
        )
    return ToolChoice(mode="tool", name=choice.function.name)


def response_format(chat: ChatCompletionRequest) -> ResponseFormat | None:
    fmt = chat.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.json_schema is None:
        raise OpenAIError.bad_request(
            "Invalid request: response_format.json_schema: required for type json_schema",
            param="response_format.json_schema",
        )
    return ResponseFormat(
        type="json_schema",
        name=fmt.json_schema.name,
        json_schema=fmt.json_schema.schema_,
        strict=fmt.json_schema.strict,
    )
