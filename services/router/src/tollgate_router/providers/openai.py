"""OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp server, Ollama) over httpx + SSE,
asking for the usage chunk with ``stream_options.include_usage``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tollgate_core.contracts import Usage
from tollgate_router.errors import ProviderError, ProviderUnavailable, from_http_status
from tollgate_router.providers._http import (
    Clients,
    error_message,
    iter_sse,
    translate_httpx,
)
from tollgate_router.providers.base import Finished, ProviderEvent, ProviderRequest, TextDelta

_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "content_filtered"}


def in_stream_error(error: object, raw: str) -> ProviderError:
    """An ``{"error": …}`` chunk mid-stream; its ``code`` is an HTTP status when numeric."""
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    status = int(code) if code.isdigit() else 503
    return from_http_status(status, f"openai: {error_message(raw.encode())}")


class OpenAIProvider:
    name = "openai"

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
        messages: list[dict[str, str]] = [{"role": "system", "content": s} for s in request.system]
        messages += [
            {"role": m.role, "content": "".join(b.text for b in m.content)}
            for m in request.messages
        ]
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        usage: Usage | None = None
        stop_reason = "end_turn"
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
                        reason = choice.get("finish_reason")
                        if reason:
                            stop_reason = _STOP.get(reason, reason)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(
                            input_tokens=int(u.get("prompt_tokens") or 0),
                            output_tokens=int(u.get("completion_tokens") or 0),
                        )
        if usage is None:
            raise ProviderUnavailable("openai: the stream ended without a usage chunk")
        yield Finished(usage, stop_reason)
