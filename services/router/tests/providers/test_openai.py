"""The OpenAI-compatible adapter against a local SSE server speaking chat completions."""

from __future__ import annotations

import httpx
import pytest

from tollgate_core.contracts import ChatMessage, TextBlock, Usage
from tollgate_router.errors import (
    InvalidProviderRequest,
    ModelNotFound,
    ProviderThrottled,
    ProviderUnavailable,
)
from tollgate_router.providers.base import Finished, ProviderRequest, TextDelta
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.testing import FakeProviderServer, Scenario


def request() -> ProviderRequest:
    return ProviderRequest(
        model="llama-3.1-8b",
        messages=(
            ChatMessage(role="user", content=[TextBlock(text="hi")]),
            ChatMessage(role="assistant", content=[TextBlock(text="hello")]),
            ChatMessage(role="user", content=[TextBlock(text="and?")]),
        ),
        system=("be brief",),
        max_tokens=32,
    )


def provider(server: FakeProviderServer, client: httpx.AsyncClient, **kw: object) -> OpenAIProvider:
    return OpenAIProvider(client, base_url=server.url + "/v1", api_key="sk-test", **kw)  # type: ignore[arg-type]


async def test_streams_text_and_reads_the_include_usage_chunk(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    events = [e async for e in provider(fake_server, http_client).stream(request())]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from a fake model"
    assert events[-1] == Finished(Usage(input_tokens=7, output_tokens=5), "end_turn")
    [received] = fake_server.received
    assert received.headers["authorization"] == "Bearer sk-test"
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}
    assert received.body["max_tokens"] == 32
    assert [m["role"] for m in received.body["messages"]] == ["system", "user", "assistant", "user"]


async def test_a_server_that_reports_no_usage_answers_and_says_the_usage_is_unreported(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    p = provider(fake_server, http_client, include_usage=False)
    events = [e async for e in p.stream(request())]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from a fake model"
    assert events[-1] == Finished(Usage(), "end_turn", reported=False)
    assert "stream_options" not in fake_server.received[0].body


@pytest.mark.parametrize(
    ("deviations", "reported"),
    [
        (frozenset({"no_usage"}), False),
        (frozenset({"no_id"}), True),
        (frozenset({"null_usage"}), True),
        (frozenset({"null_usage", "no_usage"}), False),
        (frozenset({"empty_choices"}), True),
        (frozenset({"comments"}), True),
        (frozenset({"comments", "no_usage", "no_id", "empty_choices"}), False),
        (frozenset({"json"}), True),
        (frozenset({"json", "no_usage"}), False),
    ],
    ids=lambda v: "+".join(sorted(v)) if isinstance(v, frozenset) else str(v),
)
async def test_servers_as_they_are_are_answered_normally(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    deviations: frozenset[str],
    reported: bool,
) -> None:
    """llama.cpp, vLLM, Ollama and proxies: the finish reason alone on its own chunk (the
    fake always sends it so), plus each deviation; the text and stop reason survive and the
    usage is the server's when it sends one."""
    fake_server.script = [Scenario(deviations=deviations)]
    events = [e async for e in provider(fake_server, http_client).stream(request())]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from a fake model"
    usage = Usage(input_tokens=7, output_tokens=5) if reported else Usage()
    assert events[-1] == Finished(usage, "end_turn", reported=reported)
    assert sum(isinstance(e, Finished) for e in events) == 1


async def test_a_stream_cut_off_without_usage_is_still_a_failure(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    """No [DONE] and no finish reason: the answer is not whole, so nothing is estimated."""
    fake_server.script = [Scenario(truncate=True, deviations=frozenset({"no_usage"}))]
    with pytest.raises(ProviderUnavailable, match="before its end"):
        [e async for e in provider(fake_server, http_client).stream(request())]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ProviderThrottled),
        (400, InvalidProviderRequest),
        (404, ModelNotFound),
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
    ],
)
async def test_http_errors_are_translated(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    status: int,
    error: type[Exception],
) -> None:
    fake_server.script = [Scenario(status=status, error_type="x")]
    with pytest.raises(error, match="fake error"):
        [e async for e in provider(fake_server, http_client).stream(request())]


async def test_an_error_chunk_mid_stream_fails_after_the_text_before_it(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake_server.script = [Scenario(fail_after=3)]
    seen: list[str] = []
    with pytest.raises(ProviderUnavailable):
        async for e in provider(fake_server, http_client).stream(request()):
            if isinstance(e, TextDelta):
                seen.append(e.text)
    assert len(seen) == 3
