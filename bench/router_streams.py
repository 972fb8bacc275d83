"""Router overhead per stream and concurrent streams per router process.

    .venv/bin/python bench/router_streams.py [--streams 2000] [--concurrent 1000,2000]

Scenarios (each bounded in count and by --timeout seconds):

cpu-local      GenerationHandler + an in-process provider that yields 50 tokens with no waits;
               the publisher encodes every event exactly as the Kafka producer does (JSON +
               schema) but does not send it. CPU ms per stream from process CPU time, minus the
               CPU of iterating the provider alone ("provider time excluded").
cpu-openai     The same through the OpenAI-compatible adapter: httpx + SSE parsing against the
               fake server running in a separate process (its CPU is not counted).
concurrent-local-N   N streams at once from the in-process provider, 50 tokens paced at 20 ms
               after a 200 ms first token (~1.2 s per stream): all must complete; reports wall
               time, time-to-first-chunk p50/p99 and router CPU.
concurrent-openai-N  the same through the OpenAI adapter and real HTTP against the fake server
               in another process, paced at 100 ms (~5.1 s per stream).
cpu-bedrock    the Bedrock ConverseStream adapter: SigV4 signing with botocore, httpx, and
               botocore's event-stream decoder, against the fake endpoint in another process.
concurrent-bedrock-N  N Bedrock streams at once over one async httpx pool (no thread per
               stream), paced at 100 ms like the OpenAI row.

Kafka and Postgres are not in the loop: this measures the router's own work per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.session import Session

from tollgate_core import topics
from tollgate_core.bus import Delivered
from tollgate_core.bus.codec import encode
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    Contract,
    ReplyChunkV1,
    ReplyTo,
    TextBlock,
)
from tollgate_dev.platform import free_port, wait_for_port
from tollgate_router.catalog import Catalog, CatalogSource, LocalProviderConfig, ModelSpec
from tollgate_router.handlers import GenerationHandler
from tollgate_router.journal import InMemoryJournal
from tollgate_router.providers._http import ClientShards
from tollgate_router.providers.base import Provider, ProviderRequest
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.resilience import ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.streaming import Coalescing
from tollgate_router.testing import FakeProviderServer, Scenario, ScriptedProvider, Step

TOKENS = 50
WORDS = tuple(f" w{i}" for i in range(TOKENS))
CATALOG = Catalog(
    default_model="m",
    providers={"p": LocalProviderConfig()},
    models=(ModelSpec(id="m", provider="p"),),
)


@dataclass
class EncodingPublisher:
    """Does the producer's per-event work (encode) and records when chunks went out."""

    events: int = 0
    bytes: int = 0
    first_chunk: dict[str, float] = field(default_factory=dict)

    async def publish(
        self, topic: str, event: Contract, *, key: str | None = None, partition: int | None = None
    ) -> None:
        self.bytes += len(encode(event))
        self.events += 1
        if isinstance(event, ReplyChunkV1) and event.request_id not in self.first_chunk:
            self.first_chunk[event.request_id] = time.perf_counter()


def admission(i: int) -> Delivered[AdmissionV1]:
    request = ChatRequestV1(
        request_id=f"bench-{i}",
        principal=f"user-{i % 50}",
        messages=(ChatMessage(role="user", content=[TextBlock(text=f"question number {i}")]),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
        channel="/Outbound-Messages/u",
    )
    event = AdmissionV1(request=request, reserved_input_tokens=10, reserved_output_tokens=50)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=i, key="u")


def handler(
    provider: Provider, publisher: EncodingPublisher, coalescing: Coalescing
) -> GenerationHandler:
    providers = {"p": provider}
    return GenerationHandler(
        CatalogSource(CATALOG),
        providers.__getitem__,
        publisher,
        journal=InMemoryJournal(),
        router=ResilientRouter(
            providers.__getitem__,
            retry=RetryPolicy(max_retries=0),
            timeouts=Timeouts(first_token_s=60, idle_s=60, total_s=600),
        ),
        coalescing=coalescing,
    )


async def run_streams(h: GenerationHandler, n: int, concurrency: int, offset: int = 0) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await h(admission(offset + i))

    await asyncio.gather(*(one(i) for i in range(n)))


async def provider_only_cpu(provider: Provider, n: int) -> float:
    request = ProviderRequest(
        model="m", messages=(ChatMessage(role="user", content=[TextBlock(text="q")]),)
    )
    c0 = time.process_time()
    for _ in range(n):
        async for _event in provider.stream(request):
            pass
    return time.process_time() - c0


async def cpu_per_stream(
    name: str, provider: Provider, n: int, coalescing: Coalescing, subtract_provider: bool
) -> dict[str, Any]:
    publisher = EncodingPublisher()
    h = handler(provider, publisher, coalescing)
    await run_streams(h, min(200, n), 100, offset=10_000_000)  # warm-up
    publisher.events = 0
    c0, t0 = time.process_time(), time.perf_counter()
    await run_streams(h, n, 100)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    provider_cpu = await provider_only_cpu(provider, n) if subtract_provider else 0.0
    return {
        "scenario": name,
        "streams": n,
        "coalesce_delay_ms": coalescing.delay_s * 1000,
        "events_per_stream": publisher.events / n,
        "cpu_ms_per_stream": 1000 * cpu / n,
        "provider_cpu_ms_per_stream": 1000 * provider_cpu / n,
        "router_cpu_ms_per_stream": 1000 * (cpu - provider_cpu) / n,
        "wall_s": wall,
    }


def bedrock(shards: ClientShards, url: str) -> BedrockProvider:
    session = Session()
    session.set_credentials("AKIDBENCH", "bench-secret")
    return BedrockProvider(
        shards, region="us-east-1", endpoint_url=url.removesuffix("/v1"), session=session
    )


def start_server(scenario: Scenario) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    spec = json.dumps(
        {"chunks": list(scenario.chunks), "first": scenario.first_delay_s, "gap": scenario.gap_s}
    )
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), spec])
    wait_for_port(port, timeout=30, process=proc)
    return proc, f"http://127.0.0.1:{port}/v1"


async def concurrent(kind: str, n: int, timeout: float) -> dict[str, Any]:
    """N streams at once. ``local``: the in-process provider, 50 tokens paced at 20 ms after
    200 ms; ``openai``: the HTTP adapter against the fake server in another process, paced at
    100 ms after 200 ms (a Python fake cannot emit 50k SSE events/s on this machine)."""
    first, gap = 0.2, (0.02 if kind == "local" else 0.1)
    proc: subprocess.Popen[bytes] | None = None
    shards: ClientShards | None = None
    provider: Provider
    if kind == "local":
        provider = ScriptedProvider("p", [Step(chunks=WORDS, first_delay_s=first, gap_s=gap)])
    else:
        proc, url = start_server(Scenario(chunks=WORDS, first_delay_s=first, gap_s=gap))
        shards = ClientShards(connect_timeout_s=30, max_connections=n + 10)
        if kind == "bedrock":
            provider = bedrock(shards, url)
        else:
            provider = OpenAIProvider(shards, base_url=url)
    try:
        publisher = EncodingPublisher()
        h = handler(provider, publisher, Coalescing())
        starts: dict[str, float] = {}
        in_flight = peak = done = 0

        async def one(i: int) -> None:
            nonlocal in_flight, peak, done
            starts[f"bench-{i}"] = time.perf_counter()
            in_flight += 1
            peak = max(peak, in_flight)
            await h(admission(i))
            in_flight -= 1
            done += 1

        t0, c0 = time.perf_counter(), time.process_time()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(i) for i in range(n)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ttfc = sorted(
            publisher.first_chunk[r] - s for r, s in starts.items() if r in publisher.first_chunk
        )
        return {
            "scenario": f"concurrent-{kind}-{n}",
            "streams": n,
            "peak_in_flight": peak,
            "completed": done,
            "wall_s": wall,
            "ideal_stream_s": first + gap * (TOKENS - 1),
            "ttfc_p50_ms": 1000 * statistics.median(ttfc),
            "ttfc_p99_ms": 1000 * ttfc[int(0.99 * (len(ttfc) - 1))],
            "router_cpu_s": cpu,
            "router_cpu_ms_per_stream": 1000 * cpu / n,
            "events_per_stream": publisher.events / n,
        }
    finally:
        if shards is not None:
            await shards.aclose()
        if proc is not None:
            proc.terminate()
            proc.wait(10)


async def cpu_http(kind: str, n: int) -> dict[str, Any]:
    proc, url = start_server(Scenario(chunks=WORDS))
    client = ClientShards(connect_timeout_s=30, max_connections=200)
    provider: Provider = (
        bedrock(client, url) if kind == "bedrock" else OpenAIProvider(client, base_url=url)
    )
    try:
        return await cpu_per_stream(f"cpu-{kind}", provider, n, Coalescing(), False)
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(10)


async def serve(port: int, spec: str) -> None:
    data = json.loads(spec)
    server = FakeProviderServer(
        script=[
            Scenario(chunks=tuple(data["chunks"]), first_delay_s=data["first"], gap_s=data["gap"])
        ]
    )
    await server.start(port)
    await asyncio.Event().wait()


async def main(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    local = ScriptedProvider("p", [Step(chunks=WORDS)])
    for delay in (0.05, 0.0):
        results.append(
            await cpu_per_stream("cpu-local", local, args.streams, Coalescing(delay_s=delay), True)
        )
    results.append(await cpu_http("openai", args.streams // 2))
    results.append(await cpu_http("bedrock", args.streams // 2))
    for n in args.concurrent:
        results.append(await concurrent("local", n, args.timeout))
    results.append(await concurrent("openai", args.concurrent[0], args.timeout))
    results.append(await concurrent("bedrock", args.concurrent[0], args.timeout))
    for r in results:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
        raise SystemExit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument(
        "--concurrent", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 2000]
    )
    parser.add_argument("--timeout", type=float, default=120)
    asyncio.run(main(parser.parse_args()))
