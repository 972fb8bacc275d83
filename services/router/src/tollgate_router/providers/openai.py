"""OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp server, Ollama) over httpx + SSE,
asking for the usage chunk with ``stream_options.include_usage``.

Content blocks map to ``image_url`` parts (a URL, or inline as a ``data:`` URL), assistant
``tool_calls`` and ``role: tool`` messages (one per tool result, before the user's other
content; the API has no error flag, so an error result's text is sent prefixed ``Error:``);
tools to ``tools`` of ``type: function``; streamed ``tool_calls`` deltas, told apart by their
``index``, become :class:`ToolUseDelta`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tollgate_core.contracts import (
    ChatMessageV2,
    ImageContent,
    ResponseFormat,
    TextContent,
    ToolChoice,
    ToolResultContent,
    ToolUseContent,
    Usage,
)
from tollgate_router.errors import ProviderError, ProviderUnavailable, from_http_status
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


def _image_url(block: ImageContent) -> str:
    return block.url or f"data:{block.media_type};base64,{block.data}"


def _user_messages(message: ChatMessageV2) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultContent):
            text = f"Error: {block.content}" if block.is_error else block.content
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, ImageContent):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif isinstance(block, TextContent):
            parts.append({"type": "text", "text": block.text})
    if parts and all(p["type"] == "text" for p in parts):
        out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(message: ChatMessageV2) -> dict[str, Any]:
    text = "".join(b.text for b in message.content if isinstance(b, TextContent))
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": json.dumps(b.input)},
        }
        for b in message.content
        if isinstance(b, ToolUseContent)
    ]
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def messages_of(request: ProviderRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": s} for s in request.system]
    for m in request.messages:
        if m.role == "user":
            messages += _user_messages(m)
        else:
            messages.append(_assistant_message(m))
    return messages


def tool_choice_of(choice: ToolChoice) -> object:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def response_format_of(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.json_schema}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def tool_deltas(choice: dict[str, Any]) -> list[ToolUseDelta]:
    deltas: list[ToolUseDelta] = []
    for call in (choice.get("delta") or {}).get("tool_calls") or ():
        function = call.get("function") or {}
        deltas.append(
            ToolUseDelta(
                index=int(call.get("index") or 0),
                id=call.get("id") or None,
                name=function.get("name") or None,
                arguments=function.get("arguments") or "",
            )
        )
    return deltas


def in_stream_error(error: object, raw: str) -> ProviderError:
    """An ``{"error": …}`` chunk mid-stream; its ``code`` is an HTTP status when numeric."""
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    status = int(code) if code.isdigit() else 503
    return from_http_status(status, f"openai: {error_message(raw.encode())}")


class OpenAIProvider:
    name = "openai"
    capabilities = Capabilities()

    def __init__(
        self,
        client: Clients,
        *,
        base_url: str,
        api_key: str | None = None,
        include_usage: bool = True,
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"accept": "text/event-stream"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._include_usage = include_usage

    def body(self, request: ProviderRequest) -> dict[str, Any]:
        messages = messages_of(request)
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        self._options(request, body)
        merge_extras(body, request.extras, self.name)
        return body

    @staticmethod
    def _options(request: ProviderRequest, body: dict[str, Any]) -> None:
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in request.tools
            ]
        if request.tool_choice is not None:
            body["tool_choice"] = tool_choice_of(request.tool_choice)
        if request.response_format is not None:
            body["response_format"] = response_format_of(request.response_format)
        if request.stop:
            body["stop"] = list(request.stop)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        usage: Usage | None = None
        stopped = "end_turn"
        with translate_httpx(self.name):
            async with self._client.stream(
                "POST", self._url, json=self.body(request), headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    raise from_http_status(response.status_code, f"openai: {error_message(body)}")
                async for sse in iter_sse(response):
                    if sse.data == "[DONE]":
                        continue  # read to the end so the connection goes back to the pool
                    try:
                        chunk = json.loads(sse.data)
                    except ValueError as exc:
                        raise ProviderUnavailable(f"openai: malformed chunk: {exc}") from exc
                    if "error" in chunk:
                        raise in_stream_error(chunk["error"], sse.data)
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield TextDelta(text)
                        for delta in tool_deltas(choice):
                            yield delta
                        reason = choice.get("finish_reason")
                        if reason:
                            stopped = stop_reason(reason)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(
                            input_tokens=int(u.get("prompt_tokens") or 0),
                            output_tokens=int(u.get("completion_tokens") or 0),
                        )
        if usage is None:
            raise ProviderUnavailable("openai: the stream ended without a usage chunk")
        yield Finished(usage, stopped)
