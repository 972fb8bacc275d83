"""The official ``openai`` SDK against the edge, through meter and router as processes."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.appsync_client import dev_token
from tests.ledger import wait_settled
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def sdk(stack: Stack, principal: str, groups: tuple[str, ...] = ()) -> openai.AsyncOpenAI:
    """The SDK with a development IdP token for ``principal`` as its API key."""
    token = await dev_token(stack.url("auth"), principal, groups)
    return openai.AsyncOpenAI(api_key=token, base_url=f"{stack.url('stream')}/v1", max_retries=0)


async def waiting_requests(stack: Stack) -> float:
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{stack.url('stream')}/metrics")).text
    [line] = [m for m in metrics.splitlines() if m.startswith("tollgate_stream_reply_waiters ")]
    return float(line.split()[1])


async def test_sdk_streams_a_reply_with_usage(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    async with await sdk(stack, "erin") as client:
        stream = await client.chat.completions.create(
            model="tollgate-local",
            messages=[{"role": "user", "content": "Stream me something"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    deltas = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) == 12
    assert "".join(deltas).strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 12 and usage.prompt_tokens > 0
    request_id = chunks[0].id.removeprefix("chatcmpl-")
    assert await wait_settled(embedded_postgres.url, request_id) == (
        "settled",
        usage.prompt_tokens,
        usage.completion_tokens,
        "erin",
    )


async def test_sdk_non_streaming_completion(stack: Stack) -> None:
    async with await sdk(stack, "frank") as client:
        completion = await client.chat.completions.create(
            model="tollgate-local",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Answer in full"},
            ],
        )
        models = await client.models.list()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    assert "tollgate-local" in [m.id for m in models.data]


async def test_unknown_model_is_404(stack: Stack) -> None:
    # a premium caller may call any model, so the router decides: no such model
    async with await sdk(stack, "gina", ("premium",)) as client:
        with pytest.raises(openai.NotFoundError) as exc:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
    assert exc.value.code == "model_not_found"


async def test_a_model_the_callers_groups_do_not_allow_is_403(stack: Stack) -> None:
    async with await sdk(stack, "gina") as client:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            await client.chat.completions.create(
                model="claude-big", messages=[{"role": "user", "content": "x"}]
            )
    assert exc.value.code == "model_not_allowed"


async def test_a_client_leaving_mid_stream_is_still_metered(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.url("stream")) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {await dev_token(stack.url('auth'), 'hank')}"},
            json={
                "model": "tollgate-local",
                "messages": [{"role": "user", "content": "I will not wait"}],
                "stream": True,
            },
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.aiter_lines()
        async for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break  # one real token seen: hang up
    status, _, output_tokens, principal = await wait_settled(embedded_postgres.url, request_id)
    assert (status, output_tokens, principal) == ("settled", 12, "hank")
    async with asyncio.timeout(10):
        while await waiting_requests(stack):
            await asyncio.sleep(0.1)
    # the edge is still serving
    async with await sdk(stack, "hank") as client:
        completion = await client.chat.completions.create(
            model="tollgate-local", messages=[{"role": "user", "content": "again"}]
        )
    assert completion.choices[0].message.content
