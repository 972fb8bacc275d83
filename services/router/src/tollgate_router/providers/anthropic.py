"""Anthropic's Messages API over httpx + SSE (``message_start`` carries input tokens,
``message_delta`` the output tokens and stop reason, ``error`` events fail the stream)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tollgate_core.contracts import Usage
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
from tollgate_router.providers.base import Finished, ProviderEvent, ProviderRequest, TextDelta

_ERRORS: dict[str, type[ProviderError]] = {
    "rate_limit_error": ProviderThrottled,
    "overloaded_error": ProviderUnavailable,
    "api_error": ProviderUnavailable,
    "invalid_request_error": InvalidProviderRequest,
    "not_found_error": ModelNotFound,
}


class AnthropicProvider:
    name = "anthropic"

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
                {"role": m.role, "content": [{"type": "text", "text": b.text} for b in m.content]}
                for m in request.messages
            ],
            "stream": True,
        }
        if request.system:
            body["system"] = "\n\n".join(request.system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        input_tokens: int | None = None
        output_tokens = 0
        stop_reason = "end_turn"
        stopped = False
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
                    elif kind == "message_start":
                        u = (data.get("message") or {}).get("usage") or {}
                        input_tokens = int(u.get("input_tokens") or 0)
                        output_tokens = int(u.get("output_tokens") or 0)
                    elif kind == "message_delta":
                        u = data.get("usage") or {}
                        output_tokens = int(u.get("output_tokens") or output_tokens)
                        stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                    elif kind == "message_stop":
                        stopped = True  # read on to the end: the connection is then reused
                    elif kind == "error":
                        err = data.get("error") or {}
                        cls = _ERRORS.get(str(err.get("type")), ProviderUnavailable)
                        failed = cls(f"anthropic: {err.get('message', err)}")
                        raise failed.with_usage(_reported(input_tokens, output_tokens))
        if input_tokens is None or not stopped:
            cut = ProviderUnavailable("anthropic: the stream ended before message_stop")
            raise cut.with_usage(_reported(input_tokens, output_tokens))
        yield Finished(Usage(input_tokens=input_tokens, output_tokens=output_tokens), stop_reason)


def _reported(input_tokens: int | None, output_tokens: int) -> Usage | None:
    """What ``message_start`` (and any ``message_delta``) reported before a stream failed;
    None when it failed before ``message_start``."""
    if input_tokens is None:
        return None
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens)
