"""The simulated model: streams a deterministic answer with a configured time to first
token and token rate, so the whole gateway runs (and is measured) offline."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator

from tollgate_core.contracts import Usage
from tollgate_router.providers.base import (
    Capabilities,
    Finished,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
)

_TEXT = (
    "tollgate streams this answer from a simulated model so that every hop of the gateway "
    "can be exercised without a cloud account: the edge, the meter, the router and the "
    "analytics job all see the same events they would see with a real provider"
)
_WORDS = tuple(_TEXT.split())


def count_tokens(text: str) -> int:
    """The local model's tokenizer: roughly four characters a token, at least one a word."""
    return max(len(text.split()), math.ceil(len(text) / 4)) if text else 0


class LocalProvider:
    """Text only: it cannot call tools, see images, follow a schema or stop on a sequence,
    so requests asking for those are refused (top_p and seed change nothing here: the
    answer is deterministic)."""

    name = "local"
    capabilities = Capabilities(
        unsupported=frozenset(
            {
                "tools",
                "tool_choice",
                "tool_choice.none",
                "response_format",
                "image",
                "image_url",
                "stop",
                "extras",
            }
        )
    )

    def __init__(
        self, *, time_to_first_token_ms: int, tokens_per_second: float, output_tokens: int
    ) -> None:
        self._ttft = time_to_first_token_ms / 1000
        self._gap = 1 / tokens_per_second
        self._output_tokens = output_tokens

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        prompt = " ".join(m.text() for m in request.messages)
        input_tokens = count_tokens(" ".join(request.system)) + count_tokens(prompt)
        limit = self._output_tokens
        if request.max_tokens is not None:
            limit = min(limit, request.max_tokens)
        start = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(_WORDS)
        await asyncio.sleep(self._ttft)
        for i in range(limit):
            if i:
                await asyncio.sleep(self._gap)
            word = _WORDS[(start + i) % len(_WORDS)]
            yield TextDelta(word if i == 0 else " " + word)
        stop_reason = "max_tokens" if limit < self._output_tokens else "end_turn"
        yield Finished(Usage(input_tokens=input_tokens, output_tokens=limit), stop_reason)
