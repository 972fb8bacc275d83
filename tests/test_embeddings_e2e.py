"""The official ``openai`` SDK against the whole gateway (edge, auth, meter, router as
processes, on a broker and a database of their own) with fake upstreams speaking Bedrock and
the OpenAI API: embeddings from Bedrock Titan and from an OpenAI-compatible server that reports
no usage — the vectors are the provider's, and the ledger holds the meter's exact reservation
and the provider's reported (or the router's counted) input tokens — and chat with a server
that sends no usage, streamed and whole, answered and counted."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.appsync_client import dev_token
from tests.ledger import wait_settled
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import TansuBroker, free_port
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_dev.stack import Stack, dev_auth_env, run_prepare
from tollgate_router.testing import FakeProviderServer, Scenario, fake_vector
from tollgate_router.tokens import MESSAGE_OVERHEAD, estimate_tokens

pytestmark = pytest.mark.e2e

SERVICES = ["auth", "meter", "router", "stream"]


def catalog(fake: FakeProviderServer) -> dict[str, Any]:
    return {
        "default_model": "tollgate-local",
        "providers": {
            "local": {"type": "local"},
            "bedrock": {"type": "bedrock", "region": "us-east-1", "endpoint_url": fake.url},
            "llamacpp": {"type": "openai", "base_url": fake.url + "/v1"},
        },
        "models": [
            {"id": "tollgate-local", "provider": "local"},
            {
                "id": "titan-embed",
                "kind": "embedding",
                "provider": "bedrock",
                "upstream": "amazon.titan-embed-text-v2:0",
                "input_price_per_mtok": "0.02",
            },
            {"id": "bge-small", "kind": "embedding", "provider": "llamacpp"},
            {"id": "llama", "provider": "llamacpp"},
        ],
    }


async def ledger_row(database_url: str, request_id: str) -> tuple[Any, ...]:
    url = DatabaseSettings.model_validate({"database_url": database_url}).async_url
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT model, reserved_input, reserved_output, input_tokens,"
                        " output_tokens, cost_usd FROM meter.reservations WHERE request_id = :r"
                    ),
                    {"r": request_id},
                )
            ).one()
        return tuple(row)
    finally:
        await engine.dispose()


async def test_sdk_embeddings_through_the_whole_gateway_are_metered_exactly(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    fake = FakeProviderServer()
    await fake.start(free_port())
    catalog_file = tmp_path / "models.json"
    catalog_file.write_text(json.dumps(catalog(fake)))
    url = (await database_factory()).database_url.get_secret_value()
    try:
        with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
            await asyncio.to_thread(run_prepare, broker.bootstrap_servers, url)
            stack = Stack(
                bootstrap_servers=broker.bootstrap_servers,
                database_url=url,
                log_dir=tmp_path,
                ports={service: free_port() for service in SERVICES},
                services=SERVICES,
                extra_env={
                    "TOLLGATE_ROUTER_CATALOG_FILE": str(catalog_file),
                    "AWS_ACCESS_KEY_ID": "AKIDTEST",
                    "AWS_SECRET_ACCESS_KEY": "secret-test",
                    **dev_auth_env(Path(__file__).parents[1]),
                },
            )
            try:
                await asyncio.to_thread(stack.start, timeout=90)
                await _embeddings_round_trips(stack, fake, url)
                await _chat_without_usage(stack, fake, url)
            except BaseException:
                for service in SERVICES:
                    print(f"--- {service} ---\n{stack.logs(service)[-3000:]}")  # noqa: T201
                raise
            finally:
                await asyncio.to_thread(stack.stop)
    finally:
        await fake.stop()


async def _embeddings_round_trips(stack: Stack, fake: FakeProviderServer, url: str) -> None:
    token = await dev_token(stack.url("auth"), "olga", ("premium",))
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{stack.url('stream')}/v1", max_retries=0
    ) as client:
        texts = ["the quick brown fox", "jumps"]
        titan = await client.embeddings.with_raw_response.create(
            model="titan-embed", input=texts, dimensions=256, encoding_format="float"
        )
        result = titan.parse()
        assert [d.embedding for d in result.data] == [fake_vector(t, 256) for t in texts]
        assert result.usage.prompt_tokens == 5  # Bedrock's count: 4 words + 1
        request_id = titan.headers["x-request-id"]
        assert await wait_settled(url, request_id) == ("settled", 5, 0, "olga")
        # the meter reserved ceil(19 / 3) + ceil(5 / 3) input tokens and no output
        row = await ledger_row(url, request_id)
        assert row == ("titan-embed", 7 + 2, 0, 5, 0, Decimal("0.00000010"))

        fake.script = [Scenario(deviations=frozenset({"no_usage"}))]
        bge = await client.embeddings.with_raw_response.create(
            model="bge-small", input="hello there"
        )
        counted = estimate_tokens("hello there")
        assert bge.parse().data[0].embedding == fake_vector("hello there", 8)
        assert bge.parse().usage.prompt_tokens == counted
        assert await wait_settled(url, bge.headers["x-request-id"]) == (
            "settled",
            counted,
            0,
            "olga",
        )

        with pytest.raises(openai.BadRequestError) as exc:
            await client.chat.completions.create(
                model="titan-embed", messages=[{"role": "user", "content": "hi"}]
            )
        assert exc.value.param == "model"
        with pytest.raises(openai.BadRequestError) as exc:
            await client.embeddings.create(model="tollgate-local", input="hi")
        assert exc.value.param == "model"


async def _chat_without_usage(stack: Stack, fake: FakeProviderServer, url: str) -> None:
    """The issue's llama.cpp server: no usage in streams or whole answers, yet the answer
    arrives and the ledger holds the router's count."""
    fake.script = [Scenario(deviations=frozenset({"no_usage"}))]
    expected = (
        estimate_tokens("Say hi") + 2 * MESSAGE_OVERHEAD,
        estimate_tokens("Hello from a fake model"),
    )
    token = await dev_token(stack.url("auth"), "pavel", ("premium",))
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{stack.url('stream')}/v1", max_retries=0
    ) as client:
        whole = await client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "Say hi"}]
        )
        assert whole.choices[0].message.content == "Hello from a fake model"
        assert whole.usage is not None
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == expected
        stream = await client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": "Say hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    text_ = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text_ == "Hello from a fake model"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == expected
    for request_id in (whole.id, chunks[0].id):
        settled = await wait_settled(url, request_id.removeprefix("chatcmpl-"))
        assert settled == ("settled", *expected, "pavel")
