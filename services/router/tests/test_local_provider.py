from __future__ import annotations

from tollgate_core.contracts import ChatMessage, TextBlock
from tollgate_router.providers.base import Finished, ProviderRequest, TextDelta
from tollgate_router.providers.local import LocalProvider


def provider(tokens: int = 5) -> LocalProvider:
    return LocalProvider(time_to_first_token_ms=0, tokens_per_second=10_000, output_tokens=tokens)


def request(max_tokens: int | None = None) -> ProviderRequest:
    return ProviderRequest(
        model="tollgate-local",
        messages=(ChatMessage(role="user", content=(TextBlock(text="four words of prompt"),)),),
        max_tokens=max_tokens,
    )


async def test_streams_the_configured_number_of_tokens_then_usage() -> None:
    events = [e async for e in provider(5).stream(request())]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 5
    assert isinstance(events[-1], Finished)
    assert events[-1].usage.output_tokens == 5
    assert events[-1].usage.input_tokens == 5
    assert events[-1].stop_reason == "end_turn"


async def test_max_tokens_cuts_the_answer() -> None:
    events = [e async for e in provider(5).stream(request(max_tokens=2))]
    assert sum(isinstance(e, TextDelta) for e in events) == 2
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.stop_reason == "max_tokens" and finished.usage.output_tokens == 2


async def test_the_answer_is_deterministic_for_a_prompt() -> None:
    first = "".join(
        [e.text async for e in provider().stream(request()) if isinstance(e, TextDelta)]
    )
    again = "".join(
        [e.text async for e in provider().stream(request()) if isinstance(e, TextDelta)]
    )
    assert first == again and first
