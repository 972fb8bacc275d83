"""The Anthropic adapter against a local SSE server speaking the Messages API."""

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
from tollgate_router.providers.anthropic import AnthropicProvider
from tollgate_router.providers.base import Finished, ProviderRequest, TextDelta
from tollgate_router.testing import FakeProviderServer, Scenario


def request() -> ProviderRequest:
    return ProviderRequest(
        model="claude-3-5-haiku-latest",
        messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),),
        system=("be brief", "be kind"),
    )


def provider(server: FakeProviderServer, client: httpx.AsyncClient) -> AnthropicProvider:
    return AnthropicProvider(
        client, base_url=server.url, api_key="sk-ant-test", default_max_tokens=99
    )


async def test_streams_text_with_input_and_output_usage(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    events = [e async for e in provider(fake_server, http_client).stream(request())]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from a fake model"
    assert events[-1] == Finished(Usage(input_tokens=7, output_tokens=5), "end_turn")
    [received] = fake_server.received
    assert received.headers["x-api-key"] == "sk-ant-test"
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert received.body["system"] == "be brief\n\nbe kind"
    assert received.body["max_tokens"] == 99 and received.body["stream"] is True


@pytest.mark.parametrize(
    ("stream_error", "error"),
    [
        ("overloaded_error", ProviderUnavailable),
        ("rate_limit_error", ProviderThrottled),
        ("invalid_request_error", InvalidProviderRequest),
    ],
)
async def test_error_events_mid_stream_are_translated(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    stream_error: str,
    error: type[Exception],
) -> None:
    fake_server.script = [Scenario(fail_after=1, stream_error=stream_error)]
    with pytest.raises(error):
        [e async for e in provider(fake_server, http_client).stream(request())]


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, ProviderThrottled), (400, InvalidProviderRequest), (529, ProviderUnavailable)],
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


async def test_an_unknown_model_is_not_found(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake_server.script = [Scenario(status=404, error_type="not_found_error")]
    with pytest.raises(ModelNotFound):
        [e async for e in provider(fake_server, http_client).stream(request())]


async def test_a_failure_after_message_start_carries_the_usage_it_reported(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    """``message_start`` reported 7 input tokens (and 1 output) before the ``error`` event:
    the attempt is billed, so the error says so; an HTTP error before any event reports
    nothing."""
    fake_server.script = [Scenario(fail_after=0, stream_error="overloaded_error")]
    with pytest.raises(ProviderUnavailable) as failed:
        [e async for e in provider(fake_server, http_client).stream(request())]
    assert failed.value.reported_usage == Usage(input_tokens=7, output_tokens=1)
    fake_server.script = [Scenario(status=529, error_type="overloaded_error")]
    with pytest.raises(ProviderUnavailable) as refused:
        [e async for e in provider(fake_server, http_client).stream(request())]
    assert refused.value.reported_usage is None
