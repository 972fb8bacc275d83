"""Edge capacity: idle AppSync WebSocket connections held by one edge process, its memory per
connection, and reply chunks delivered per second.

Starts a Tansu broker and one real ``tollgate-stream`` process, then from this process:

1. opens ``--connections`` WebSockets (``aws-appsync-event-ws`` + header subprotocol,
   ``connection_init``, one ``subscribe`` each to ``/Outbound-Messages/u<i>``) and reads the
   edge's RSS from ``/proc`` before and after;
2. *direct* delivery: produces ``--chunks`` reply chunks to ``tollgate.replies`` spread over
   ``--channels`` channels with one subscriber each, and times their arrival at the clients;
3. *fan-out* delivery: ``--fanout`` clients subscribe to one channel and ``--fanout-chunks``
   chunks are produced to it, so delivery is not bounded by the Kafka producer.

Rounds 2 and 3 run ``--rounds`` times; the report gives medians. Every wait is bounded.

    .venv/bin/python bench/edge_connections.py [--connections 10000] [--chunks 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tollgate_core import topics
from tollgate_core.bus import EventProducer
from tollgate_core.bus import headers as h
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.bus.codec import encode
from tollgate_core.contracts import ReplyChunkV1, new_request_id
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import TansuBroker, free_port, stop_process


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def subprotocols(host: str) -> list[Any]:
    header = base64.urlsafe_b64encode(json.dumps({"host": host}).encode()).decode().rstrip("=")
    return ["aws-appsync-event-ws", f"header-{header}"]


async def open_client(
    url: str, host: str, channel: str, compression: str | None
) -> ClientConnection:
    ws = await websockets.connect(
        url,
        subprotocols=subprotocols(host),
        ping_interval=None,
        compression=compression,
        max_queue=None,
        open_timeout=60,
    )
    await ws.send('{"type":"connection_init"}')
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel": channel}))
    assert json.loads(await ws.recv())["type"] == "subscribe_success"
    return ws


async def open_many(
    url: str, host: str, n: int, compression: str | None, concurrency: int = 200
) -> list[ClientConnection]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> ClientConnection:
        async with semaphore:
            return await open_client(url, host, f"/Outbound-Messages/u{i}", compression)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def count_data(
    ws: ClientConnection, expected: int, firsts: list[float], lasts: list[float]
) -> None:
    got = 0
    while got < expected:
        message = json.loads(await ws.recv())
        if message.get("type") == "data":
            if got == 0:
                firsts.append(time.perf_counter())
            got += 1
    lasts.append(time.perf_counter())


async def produce(bootstrap: str, chunks: list[ReplyChunkV1], batch: int = 5000) -> float:
    """Produce the chunks (pre-encoded, no tracing) and return the seconds it took."""
    producer = EventProducer(KafkaSettings(bootstrap_servers=bootstrap), client_id="bench")
    await producer.start()
    encoded = [(c.request_id, encode(c), [(h.SCHEMA, c.SCHEMA.encode())]) for c in chunks]
    try:
        t0 = time.perf_counter()
        for start in range(0, len(encoded), batch):
            await asyncio.gather(
                *(
                    producer.send_raw(topics.REPLIES, value, key=key, headers=headers)
                    for key, value, headers in encoded[start : start + batch]
                )
            )
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def produce_elsewhere(bootstrap: str, channels: list[str], per_channel: int) -> float:
    """Run :func:`produce` in a child process, so the producer has its own core."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--produce",
        json.dumps({"bootstrap": bootstrap, "channels": channels, "per_channel": per_channel}),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError("producer failed")
    return float(out.decode().strip().splitlines()[-1])


def chunks_for(channels: list[str], per_channel: int, first_seq: int = 1) -> list[ReplyChunkV1]:
    out: list[ReplyChunkV1] = []
    requests = {c: new_request_id() for c in channels}
    for seq in range(first_seq, first_seq + per_channel):
        for channel in channels:
            out.append(
                ReplyChunkV1(
                    request_id=requests[channel],
                    principal="bench",
                    seq=seq,
                    channel=channel,
                    text="token ",
                )
            )
    return out


async def delivery_round(
    bootstrap: str,
    clients: list[ClientConnection],
    channels: list[str],
    per_channel: int,
    receivers_per_channel: int,
) -> dict[str, float]:
    firsts: list[float] = []
    lasts: list[float] = []
    expected = per_channel  # each client listens to one channel
    readers = [asyncio.create_task(count_data(ws, expected, firsts, lasts)) for ws in clients]
    produce_s = await produce_elsewhere(bootstrap, channels, per_channel)
    async with asyncio.timeout(300):
        await asyncio.gather(*readers)
    elapsed = max(lasts) - min(firsts)  # first delivery to last, producer start-up excluded
    delivered = len(clients) * per_channel
    return {
        "chunks_produced": len(channels) * per_channel,
        "deliveries": delivered,
        "seconds": elapsed,
        "deliveries_per_s": delivered / elapsed,
        "produced_per_s": len(channels) * per_channel / produce_s,
        "receivers_per_channel": receivers_per_channel,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    needed = args.connections + args.fanout + 200
    if nofile < needed:
        raise SystemExit(f"open-file limit {nofile} is below the {needed} this run needs")
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-edge-"))
    broker = TansuBroker(log_path=workdir / "tansu.log").start()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    await ensure_topics(kafka)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "TOLLGATE_STREAM_PORT": str(port),
        "TOLLGATE_STREAM_SEND_QUEUE_SIZE": "100000",
        "OTEL_SDK_DISABLED": "true",
        # the edge's own cost: connection auth is the auth service's, see bench/auth.md
        "TOLLGATE_STREAM_AUTH_MODE": "none",
    }
    log = open(workdir / "stream.log", "ab")  # noqa: SIM115
    edge = subprocess.Popen(
        [str(Path(sys.executable).parent / "tollgate-stream")], env=env, stdout=log, stderr=log
    )
    host = f"127.0.0.1:{port}"
    url = f"ws://{host}/event/realtime"
    result: dict[str, Any] = {"connections": args.connections, "nofile": nofile}
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                try:
                    if (await client.get(f"http://{host}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        result["rss_idle_mib"] = rss_mib(edge.pid)

        t0 = time.perf_counter()
        async with asyncio.timeout(600):
            clients = await open_many(url, host, args.connections, args.compression)
        result["open_seconds"] = time.perf_counter() - t0
        await asyncio.sleep(2)
        result["rss_connected_mib"] = rss_mib(edge.pid)
        result["kib_per_connection"] = (
            (result["rss_connected_mib"] - result["rss_idle_mib"]) * 1024 / args.connections
        )

        direct = clients[: args.channels]
        direct_channels = [f"/Outbound-Messages/u{i}" for i in range(args.channels)]
        per_channel = args.chunks // args.channels
        rounds = []
        for _ in range(args.rounds):
            rounds.append(
                await delivery_round(
                    broker.bootstrap_servers, direct, direct_channels, per_channel, 1
                )
            )
        result["direct"] = rounds

        fan = await open_many_fanout(url, host, args.fanout, args.compression)
        fan_rounds = []
        for _ in range(args.rounds):
            fan_rounds.append(
                await delivery_round(
                    broker.bootstrap_servers,
                    fan,
                    ["/Outbound-Messages/fan"],
                    args.fanout_chunks,
                    args.fanout,
                )
            )
        result["fanout"] = fan_rounds
        result["rss_end_mib"] = rss_mib(edge.pid)
        result["edge_alive"] = edge.poll() is None
        await asyncio.gather(*(ws.close() for ws in clients + fan), return_exceptions=True)
    finally:
        stop_process(edge, timeout=15)
        log.close()
        broker.stop()
    return result


async def open_many_fanout(
    url: str, host: str, n: int, compression: str | None
) -> list[ClientConnection]:
    semaphore = asyncio.Semaphore(100)

    async def one() -> ClientConnection:
        async with semaphore:
            return await open_client(url, host, "/Outbound-Messages/fan", compression)

    return list(await asyncio.gather(*(one() for _ in range(n))))


def report(result: dict[str, Any]) -> None:
    def median(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    print(json.dumps(result, indent=2))
    print()
    print(f"connections held:            {result['connections']}")
    print(
        f"edge RSS idle / connected:   {result['rss_idle_mib']:.0f} / "
        f"{result['rss_connected_mib']:.0f} MiB"
    )
    print(f"memory per connection:       {result['kib_per_connection']:.1f} KiB")
    print(f"time to open all:            {result['open_seconds']:.1f} s")
    print(
        f"direct deliveries/s (median): {median(result['direct'], 'deliveries_per_s'):.0f} "
        f"(producer {median(result['direct'], 'produced_per_s'):.0f}/s)"
    )
    print(f"fan-out deliveries/s (median): {median(result['fanout'], 'deliveries_per_s'):.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--produce":
        job = json.loads(sys.argv[2])
        seconds = asyncio.run(
            produce(job["bootstrap"], chunks_for(job["channels"], job["per_channel"]))
        )
        print(seconds)
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=250)
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--fanout", type=int, default=250)
    parser.add_argument("--fanout-chunks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="offer permessage-deflate as browsers do (default) or not",
    )
    args = parser.parse_args()
    args.compression = None if args.compression == "none" else "deflate"
    report(asyncio.run(main(args)))
