"""Anthropic's Messages API over httpx + SSE (``message_start`` carries input tokens,
``message_delta`` the output tokens and stop reason, ``error`` events fail the stream).

Content blocks map one to one (``image`` with a ``base64`` or ``url`` source, ``tool_use``,
``tool_result`` with ``is_error``); a ``tool_use`` content block streamed as
``content_block_start`` then ``input_json_delta`` pieces becomes :class:`ToolUseDelta`. The
Messages API has no ``seed`` and no ``response_format``: both are refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tollgate_core.contracts import (
    ContentBlock,
    ImageContent,
    TextContent,
    ToolChoice,
    ToolUseContent,
    Usage,
)
from tollgate_router.errors import (
    InvalidProviderRequest,
    ModelNotFound,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
    from_http_status,
)
from tollgate_router.providers._http import (
    Clients,
    error_message,
    iter_sse,
    translate_httpx,
)
from tollgate_router.providers.base import (
    Capabilities,
    Finished,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
    merge_extras,
    stop_reason,
)

_ERRORS: dict[str, type[ProviderError]] = {
    "rate_limit_error": ProviderThrottled,
    "overloaded_error": ProviderUnavailable,
    "api_error": ProviderUnavailable,
    "invalid_request_error": InvalidProviderRequest,
    "not_found_error": ModelNotFound,
}


def block_of(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, TextContent):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageContent):
        source: dict[str, Any] = (
            {"type": "url", "url": block.url}
            if block.url is not None
            else {"type": "base64", "media_type": block.media_type, "data": block.data}
        )
        return {"type": "image", "source": source}
    if isinstance(block, ToolUseContent):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return {
        "type": "tool_result",
        "tool_use_id": block.tool_use_id,
        "content": block.content,
        "is_error": block.is_error,
    }


def tool_choice_of(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "tool":
        return {"type": "tool", "name": choice.name}
    return {"type": {"required": "any"}.get(choice.mode, choice.mode)}


class _ToolBlocks:
    """Content block index → the tool call's position among the answer's calls."""

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}

    def start(self, data: dict[str, Any]) -> ToolUseDelta | None:
        block = data.get("content_block") or {}
        if block.get("type") != "tool_use":
            return None
        index = self._calls.setdefault(int(data.get("index") or 0), len(self._calls))
        return ToolUseDelta(index, id=block.get("id"), name=block.get("name"))

    def delta(self, data: dict[str, Any]) -> ToolUseDelta | None:
        delta = data.get("delta") or {}
        call = self._calls.get(int(data.get("index") or 0))
        if delta.get("type") != "input_json_delta" or call is None:
            return None
        return ToolUseDelta(call, arguments=str(delta.get("partial_json") or ""))


class AnthropicProvider:
    name = "anthropic"
    capabilities = Capabilities(unsupported=frozenset({"seed", "response_format"}))

    def __init__(
        self,
        client: Clients,
        *,
        base_url: str,
        api_key: str | None = None,
        api_version: str = "2023-06-01",
        default_max_tokens: int = 1024,
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._headers = {"anthropic-version": api_version, "accept": "text/event-stream"}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._default_max_tokens = default_max_tokens

    def body(self, request: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or self._default_max_tokens,
            "messages": [
                {"role": m.role, "content": [block_of(b) for b in m.content]}
                for m in request.messages
            ],
            "stream": True,
        }
        if request.system:
            body["system"] = "\n\n".join(request.system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in request.tools
            ]
        if request.tool_choice is not None:
            body["tool_choice"] = tool_choice_of(request.tool_choice)
        merge_extras(body, request.extras, self.name)
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        input_tokens: int | None = None
        output_tokens = 0
        reason = "end_turn"
        stopped = False
        tools = _ToolBlocks()
        with translate_httpx(self.name):
            async with self._client.stream(
                "POST", self._url, json=self.body(request), headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    raise from_http_status(
                        response.status_code, f"anthropic: {error_message(body)}"
                    )
                async for sse in iter_sse(response):
                    try:
                        data = json.loads(sse.data)
                    except ValueError as exc:
                        raise ProviderUnavailable(f"anthropic: malformed event: {exc}") from exc
                    kind = data.get("type", sse.event)
                    if kind == "content_block_delta":
                        text = (data.get("delta") or {}).get("text")
                        if text:
                            yield TextDelta(text)
                        elif (call := tools.delta(data)) is not None:
                            yield call
                    elif kind == "content_block_start":
                        if (call := tools.start(data)) is not None:
                            yield call
                    elif kind == "message_start":
                        u = (data.get("message") or {}).get("usage") or {}
                        input_tokens = int(u.get("input_tokens") or 0)
                        output_tokens = int(u.get("output_tokens") or 0)
                    elif kind == "message_delta":
                        u = data.get("usage") or {}
                        output_tokens = int(u.get("output_tokens") or output_tokens)
                        reason = (data.get("delta") or {}).get("stop_reason") or reason
                    elif kind == "message_stop":
                        stopped = True  # read on to the end: the connection is then reused
                    elif kind == "error":
                        err = data.get("error") or {}
                        cls = _ERRORS.get(str(err.get("type")), ProviderUnavailable)
                        raise cls(f"anthropic: {err.get('message', err)}")
        if input_tokens is None or not stopped:
            raise ProviderUnavailable("anthropic: the stream ended before message_stop")
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finished(usage, stop_reason(reason))
