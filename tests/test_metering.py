"""Metering end to end: a user who exhausts a window gets the clear error on the WebSocket
and sees the usage; a meter killed mid-batch neither loses nor duplicates usage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from tests.appsync_client import chat_event, connect, dev_token
from tests.conftest import METER_ADMIN_TOKEN
from tests.ledger import reserved
from tollgate_core import db, topics
from tollgate_core.bus import EventProducer
from tollgate_core.contracts import Usage, UsageRecordV1
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_dev.stack import Stack, run_prepare, wait_ready

pytestmark = pytest.mark.e2e


async def ask(socket: Any, client: httpx.AsyncClient, edge: str, token: str) -> dict[str, Any]:
    """Publish one chat event and return the last event of its answer."""
    response = await client.post(
        f"{edge}/event",
        json={
            "channel": "/Inbound-Messages/zoe",
            "events": [chat_event("spend my budget", maxTokens=20)],
        },
        headers={"Authorization": token},
    )
    request_id = response.json()["successful"][0]["identifier"]
    async with asyncio.timeout(30):
        async for event in socket.events("s"):
            # errors name the request inside the error object, as the AWS sample's do
            owner = event.get("requestId") or event.get("error", {}).get("requestId")
            if owner == request_id and ("metadata" in event or "error" in event):
                return event
    raise AssertionError("unreachable")


async def test_exhausted_window_gives_a_clear_error_and_usage_shows_it(stack: Stack) -> None:
    edge, meter = stack.url("stream"), stack.url("meter")
    async with httpx.AsyncClient() as client:
        limits = {
            "windows": [{"name": "hourly", "kind": "trailing", "seconds": 3600, "output": 30}]
        }
        response = await client.put(
            f"{meter}/v1/admin/principals/zoe",
            json=limits,
            headers={"authorization": f"Bearer {METER_ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        token = await dev_token(stack.url("auth"), "zoe")
        async with connect(edge, {"Authorization": token}) as socket:
            assert (await socket.subscribe("s", "/Outbound-Messages/zoe"))["type"] == (
                "subscribe_success"
            )
            first = await ask(socket, client, edge, token)
            assert first["metadata"]["usage"]["outputTokens"] == 12
            # settlement follows the answer asynchronously: wait until the 20 reserved tokens
            # have been replaced by the 12 used
            async with asyncio.timeout(30):
                while True:
                    me = await client.get(f"{meter}/v1/usage/me", headers={"authorization": token})
                    if me.json()["windows"][0]["reserved"]["output"] == 0:
                        break
                    await asyncio.sleep(0.1)
            # reserved 20 more on top of the 12 used: 32 > 30, refused before any model runs
            second = await ask(socket, client, edge, token)
        error = second["error"]
        assert error["type"] == "token_limit_exceeded"
        assert error["details"]["window"] == "hourly"
        assert error["details"]["limit_type"] == "output"
        assert error["details"]["limit"] == 30 and error["details"]["used"] == 12
        assert error["details"]["retry_after_s"] > 0
        assert "hourly limit of 30 output tokens" in error["message"]

        usage = (await client.get(f"{meter}/v1/usage/me", headers={"authorization": token})).json()
    assert "windows" in usage, usage
    [hourly] = usage["windows"]
    assert hourly["used"]["output"] == 12 and hourly["remaining"]["output"] == 18
    assert usage["month_by_model"][0]["output_tokens"] == 12

    # the same budget, asked through the OpenAI-compatible API: 429 with Retry-After
    async with openai.AsyncOpenAI(api_key=token, base_url=f"{edge}/v1", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(
                model="tollgate-local",
                max_tokens=20,
                messages=[{"role": "user", "content": "one more"}],
            )
    assert refused.value.code == "token_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) > 0
    assert "hourly limit of 30 output tokens" in refused.value.message


async def test_meter_killed_mid_batch_neither_loses_nor_duplicates_usage(
    kafka_broker: TansuBroker,
    kafka_settings: KafkaSettings,
    database_factory: DatabaseFactory,
    tmp_path: Path,
    unique: Callable[[str], str],
) -> None:
    database = await database_factory()
    url = database.database_url.get_secret_value()
    await asyncio.to_thread(run_prepare, kafka_broker.bootstrap_servers, url)
    prefix = unique("ledger")
    records = [
        UsageRecordV1(
            request_id=f"{prefix}-r{i}",
            principal=f"{prefix}-p{i % 7}",
            model="m",
            provider="local",
            usage=Usage(input_tokens=random.randint(1, 50), output_tokens=random.randint(1, 500)),
        )
        for i in range(1500)
    ]
    async with EventProducer(kafka_settings, client_id="test") as producer:
        await asyncio.gather(*(producer.publish(topics.USAGE, r, key=r.principal) for r in records))
    stack = Stack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=url,
        log_dir=tmp_path,
        ports={"meter": free_port()},
        services=["meter"],
        extra_env={"TOLLGATE_METER_CONSUMER_GROUP": unique("meter")},
    )
    engine = db.create_engine(database, application_name="test")

    async def settled() -> tuple[int, int, int]:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), coalesce(sum(input_tokens), 0),"
                        " coalesce(sum(output_tokens), 0)"
                        " FROM meter.reservations WHERE status = 'settled' AND request_id LIKE :p"
                    ),
                    {"p": f"{prefix}-%"},
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2])

    try:
        first = stack.start_service("meter")
        async with asyncio.timeout(90):
            while (await settled())[0] < 200:
                await asyncio.sleep(0.01)
        first.kill()  # SIGKILL: no graceful commit
        await asyncio.to_thread(first.wait)
        killed_at = (await settled())[0]
        stack.start_service("meter")
        await asyncio.to_thread(wait_ready, {"meter": stack.url("meter")}, timeout=60)
        async with asyncio.timeout(120):
            while (await settled())[0] < len(records):
                await asyncio.sleep(0.1)
        count, inp, out = await settled()
        async with engine.connect() as conn:
            buckets = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)"
                        " FROM meter.buckets WHERE principal LIKE :p"
                    ),
                    {"p": f"{prefix}-%"},
                )
            ).one()
    finally:
        stack.stop()
        await engine.dispose()
    assert killed_at < len(records)  # it really died mid-batch
    assert count == len(records)
    assert (inp, out) == (
        sum(r.usage.input_tokens for r in records),
        sum(r.usage.output_tokens for r in records),
    )
    # redelivered records after the kill were not counted twice in the windows either
    assert (int(buckets[0]), int(buckets[1])) == (inp, out)


async def test_the_reservation_is_the_output_the_router_will_allow(
    stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    """No max_tokens: the meter reserves the model's catalog default, which the router will
    give it, not a default of its own; a max_tokens above the model's maximum reserves the
    maximum, which the router caps it at (a larger reservation would refuse requests that
    fit)."""
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"{stack.url('router')}/v1/models")).json()["data"]
    [local] = [m for m in models if m["id"] == "tollgate-local"]
    default, maximum = local["max_tokens"]["default"], local["max_tokens"]["max"]
    token = await dev_token(stack.url("auth"), "yara")
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{stack.url('stream')}/v1", max_retries=0
    ) as sdk:
        for asked, expected in ((None, default), (maximum + 1000, maximum)):
            extra: dict[str, Any] = {} if asked is None else {"max_tokens": asked}
            answer = await sdk.chat.completions.with_raw_response.create(
                model="tollgate-local",
                messages=[{"role": "user", "content": "how much may you write?"}],
                **extra,
            )
            request_id = answer.headers["x-request-id"]
            assert (await reserved(embedded_postgres.url, request_id))[1] == expected
