"""Request logs reach the analytics job: its metrics count tokens and latency by model."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.appsync_client import chat_event, connect, dev_token
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


def output_tokens(metrics: str) -> float:
    match = re.search(
        r'^tollgate_analytics_tokens_total\{direction="output",model="tollgate-local"\} (\S+)$',
        metrics,
        re.M,
    )
    return float(match.group(1)) if match else 0.0


async def test_analytics_counts_the_tokens_of_answered_requests(stack: Stack) -> None:
    analytics = stack.url("analytics")
    async with httpx.AsyncClient() as client:
        before = output_tokens((await client.get(f"{analytics}/metrics")).text)
        token = await dev_token(stack.url("auth"), "erin")
        async with connect(stack.url("stream"), {"Authorization": token}) as socket:
            await socket.subscribe("s", "/Outbound-Messages/erin")
            response = await client.post(
                f"{stack.url('stream')}/event",
                json={
                    "channel": "/Inbound-Messages/erin",
                    "events": [chat_event("count my tokens")],
                },
                headers={"Authorization": token},
            )
            assert response.json()["failed"] == [], response.text
            async with asyncio.timeout(30):
                async for event in socket.events("s"):
                    if "metadata" in event:
                        produced = event["metadata"]["usage"]["outputTokens"]
                        break
        async with asyncio.timeout(30):
            while (
                output_tokens((await client.get(f"{analytics}/metrics")).text) < before + produced
            ):
                await asyncio.sleep(0.2)
        metrics = (await client.get(f"{analytics}/metrics")).text
    assert 'tollgate_analytics_time_to_first_token_seconds_count{model="tollgate-local"}' in metrics
    assert 'tollgate_analytics_requests_total{model="tollgate-local",status="ok"}' in metrics
