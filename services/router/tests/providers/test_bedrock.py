"""The Bedrock adapter against a local ConverseStream endpoint speaking the real event-stream
wire format; the fake itself is checked with boto3's own client first."""

from __future__ import annotations

import asyncio

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from botocore.session import Session

from tollgate_core.contracts import ChatMessage, TextBlock, Usage
from tollgate_router.errors import (
    InvalidProviderRequest,
    ModelNotAllowed,
    ModelNotFound,
    ProviderThrottled,
    ProviderUnavailable,
)
from tollgate_router.providers.base import Finished, ProviderRequest, TextDelta
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.testing import FakeProviderServer, Scenario

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"


def request(max_tokens: int | None = 64) -> ProviderRequest:
    return ProviderRequest(
        model=MODEL,
        messages=(ChatMessage(role="user", content=[TextBlock(text="hi")]),),
        system=("be brief",),
        max_tokens=max_tokens,
        temperature=0.2,
    )


def session() -> Session:
    s = Session()
    s.set_credentials("AKIDTEST", "secret-test")
    return s


def provider(server: FakeProviderServer, client: httpx.AsyncClient) -> BedrockProvider:
    return BedrockProvider(client, region="us-east-1", endpoint_url=server.url, session=session())


def boto3_client(server: FakeProviderServer):  # type: ignore[no-untyped-def]
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret-test",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


async def collect(p: BedrockProvider) -> list[object]:
    return [e async for e in p.stream(request())]


async def test_the_fake_endpoint_is_understood_by_boto3(fake_server: FakeProviderServer) -> None:
    def call() -> list[dict[str, object]]:
        response = boto3_client(fake_server).converse_stream(
            modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
        return list(response["stream"])

    events = await asyncio.to_thread(call)
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 5  # type: ignore[index]
    assert fake_server.received[0].path == f"/model/{MODEL.replace(':', '%3A')}/converse-stream"


async def test_boto3_sees_the_fakes_errors_as_bedrock_errors(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.script = [
        Scenario(fail_after=1, stream_error="throttlingException"),
        Scenario(status=429, error_type="ThrottlingException"),
    ]

    def call() -> list[dict[str, object]]:
        response = boto3_client(fake_server).converse_stream(
            modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
        return list(response["stream"])

    with pytest.raises(EventStreamError) as in_stream:
        await asyncio.to_thread(call)
    assert in_stream.value.response["Error"]["Code"] == "throttlingException"
    with pytest.raises(ClientError) as pre_stream:
        await asyncio.to_thread(call)
    assert pre_stream.value.response["Error"]["Code"] == "ThrottlingException"


async def test_streams_text_then_usage_with_a_signed_converse_request(
    fake_server: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    events = await collect(provider(fake_server, http_client))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(texts) == "Hello from a fake model"
    assert events[-1] == Finished(Usage(input_tokens=7, output_tokens=5), "end_turn")
    [received] = fake_server.received
    assert received.path == f"/model/{MODEL.replace(':', '%3A')}/converse-stream"
    auth = received.headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/us-east-1/bedrock/aws4_request" in auth and "x-amz-date" in auth
    assert received.body == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2},
    }


async def test_credentials_come_from_the_standard_chain(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-env")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    p = BedrockProvider(http_client, endpoint_url=fake_server.url)
    await collect(p)
    auth = fake_server.received[0].headers["authorization"]
    assert "Credential=AKIDFROMENV/" in auth and "/eu-west-3/bedrock/" in auth


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        ("throttlingException", ProviderThrottled),
        ("modelStreamErrorException", ProviderUnavailable),
        ("internalServerException", ProviderUnavailable),
        ("validationException", InvalidProviderRequest),
    ],
)
async def test_in_stream_exceptions_are_translated_after_the_text_before_them(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    exception: str,
    error: type[Exception],
) -> None:
    fake_server.script = [Scenario(fail_after=2, stream_error=exception)]
    seen: list[str] = []
    with pytest.raises(error):
        async for event in provider(fake_server, http_client).stream(request()):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert seen == ["Hello", " from"]


@pytest.mark.parametrize(
    ("status", "aws_type", "error", "retriable"),
    [
        (429, "ThrottlingException", ProviderThrottled, True),
        (400, "ValidationException", InvalidProviderRequest, False),
        (404, "ResourceNotFoundException", ModelNotFound, False),
        (403, "AccessDeniedException", ModelNotAllowed, False),
        (503, "ServiceUnavailableException", ProviderUnavailable, True),
    ],
)
async def test_pre_stream_errors_are_translated_by_their_aws_error_type(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    status: int,
    aws_type: str,
    error: type[Exception],
    retriable: bool,
) -> None:
    fake_server.script = [Scenario(status=status, error_type=aws_type)]
    with pytest.raises(error) as raised:
        await collect(provider(fake_server, http_client))
    assert raised.value.retriable is retriable  # type: ignore[attr-defined]
    assert f"fake {aws_type}" in str(raised.value)


async def test_a_refused_connection_is_unavailable(http_client: httpx.AsyncClient) -> None:
    from tollgate_dev.platform import free_port

    p = BedrockProvider(
        http_client,
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        session=session(),
    )
    with pytest.raises(ProviderUnavailable):
        await collect(p)


async def test_a_missing_region_is_a_configuration_error_and_missing_credentials_unavailable(
    fake_server: FakeProviderServer,
    http_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollgate_core.errors import ConfigurationError

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError):
        BedrockProvider(http_client, endpoint_url=fake_server.url)
    p = BedrockProvider(http_client, region="us-east-1", endpoint_url=fake_server.url)
    with pytest.raises(ProviderUnavailable, match="credentials"):
        await collect(p)
    assert fake_server.received == []
