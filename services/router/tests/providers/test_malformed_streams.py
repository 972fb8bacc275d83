"""Every adapter against streams that break the API's shape or end too early: a typed
``provider_unavailable`` naming what was wrong, after the text that came before it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from botocore.session import Session

from tollgate_core.contracts import ChatMessage, TextBlock
from tollgate_router.errors import ProviderUnavailable
from tollgate_router.providers.anthropic import AnthropicProvider
from tollgate_router.providers.base import Provider, ProviderRequest, TextDelta
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.testing import FakeProviderServer, Scenario


def bedrock(server: FakeProviderServer, client: httpx.AsyncClient) -> Provider:
    session = Session()
    session.set_credentials("AKIDTEST", "secret-test")
    return BedrockProvider(client, region="us-east-1", endpoint_url=server.url, session=session)


def openai(server: FakeProviderServer, client: httpx.AsyncClient) -> Provider:
    return OpenAIProvider(client, base_url=server.url + "/v1", api_key="sk-test")


def anthropic(server: FakeProviderServer, client: httpx.AsyncClient) -> Provider:
    return AnthropicProvider(client, base_url=server.url, api_key="sk-ant-test")


Adapter = Callable[[FakeProviderServer, httpx.AsyncClient], Provider]


@pytest.mark.parametrize(
    ("adapter", "scenario", "message", "text_before"),
    [
        (bedrock, Scenario(garbage_after=2), "corrupt event stream", "Hello from"),
        (bedrock, Scenario(truncate=True), "without its metadata event", "Hello from a fake model"),
        (openai, Scenario(garbage_after=2), "malformed response", "Hello from"),
        (openai, Scenario(truncate=True), "before its end", "Hello from a fake model"),
        (anthropic, Scenario(garbage_after=2), "malformed response", "Hello from"),
        (anthropic, Scenario(truncate=True), "before message_stop", "Hello from a fake model"),
    ],
    ids=[
        "bedrock-bad-crc",
        "bedrock-no-metadata",
        "openai-not-an-object",
        "openai-no-usage",
        "anthropic-not-an-object",
        "anthropic-no-message-stop",
    ],
)
async def test_a_malformed_or_truncated_stream_is_unavailable_after_the_text_before_it(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    adapter: Adapter,
    scenario: Scenario,
    message: str,
    text_before: str,
) -> None:
    fake_server.script = [scenario]
    request = ProviderRequest(
        model="m", messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),)
    )
    seen: list[str] = []
    with pytest.raises(ProviderUnavailable, match=message):
        async for event in adapter(fake_server, http_client).stream(request):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert "".join(seen) == text_before
