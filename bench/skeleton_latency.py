"""End-to-end latency of the walking skeleton: publish over HTTP, receive over WebSocket.

Starts its own Tansu broker, embedded Postgres and the five services (as `make run` does, on
free ports), then sends requests one after another and reports, for each, the time from the
HTTP publish to the first text delta on the WebSocket and to the final usage event. The
local model is set to a zero time-to-first-token so the figures are the gateway's own
overhead (edge → Kafka → meter (Postgres) → Kafka → router → Kafka → edge → client).

    .venv/bin/python bench/skeleton_latency.py --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.appsync_client import chat_event, connect, dev_token
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import SERVICES, Stack, dev_auth_env, run_prepare


async def measure(edge: str, auth: str, requests: int) -> tuple[list[float], list[float]]:
    first_token: list[float] = []
    complete: list[float] = []
    token = await dev_token(auth, "bench")
    headers = {"Authorization": token}
    async with connect(edge, headers) as socket, httpx.AsyncClient(headers=headers) as client:
        await socket.subscribe("s", "/Outbound-Messages/bench")
        for i in range(requests):
            start = time.perf_counter()
            response = await client.post(
                f"{edge}/event",
                json={"channel": "/Inbound-Messages/bench", "events": [chat_event(f"request {i}")]},
            )
            request_id = response.json()["successful"][0]["identifier"]
            got_first = False
            async with asyncio.timeout(30):
                async for event in socket.events("s"):
                    if event.get("requestId") != request_id:
                        continue
                    if "contentBlockDelta" in event and not got_first:
                        first_token.append(time.perf_counter() - start)
                        got_first = True
                    if "metadata" in event:
                        complete.append(time.perf_counter() - start)
                        break
    return first_token, complete


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with TansuBroker() as broker, EmbeddedPostgres(Path(tmp) / "pg") as pg:
            run_prepare(broker.bootstrap_servers, pg.url)
            platform_s = time.perf_counter() - t0
            stack = Stack(
                bootstrap_servers=broker.bootstrap_servers,
                database_url=pg.url,
                log_dir=Path(tmp) / "logs",
                ports={s: free_port() for s in SERVICES},
                extra_env={
                    **dev_auth_env(Path(__file__).resolve().parent.parent),
                    "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "0",
                    "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "1000",
                    "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": str(args.tokens),
                },
            )
            try:
                services_s = stack.start(timeout=180)
                asyncio.run(measure(stack.url("stream"), stack.url("auth"), 3))  # warm-up
                first, complete = asyncio.run(
                    measure(stack.url("stream"), stack.url("auth"), args.requests)
                )
            finally:
                stack.stop()
    ms = lambda xs, q: 1000 * statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
    print(
        json.dumps(
            {
                "requests": args.requests,
                "output_tokens": args.tokens,
                "platform_start_s": round(platform_s, 2),
                "services_ready_s": round(services_s, 2),
                "first_token_ms": {
                    "p50": round(1000 * statistics.median(first), 1),
                    "p90": round(ms(first, 90), 1),
                },
                "complete_ms": {
                    "p50": round(1000 * statistics.median(complete), 1),
                    "p90": round(ms(complete, 90), 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
