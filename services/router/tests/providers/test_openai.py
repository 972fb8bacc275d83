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


async def test_a_server_that_reports_no_usage_is_an_error_not_a_free_answer(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    p = provider(fake_server, http_client, include_usage=False)
    with pytest.raises(ProviderUnavailable, match="usage"):
        [e async for e in p.stream(request())]


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
