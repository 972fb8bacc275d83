"""What each edge replica pays per reply when every replica reads every reply.

Starts Tansu and ``--replicas`` edge processes (``TOLLGATE_STREAM_AUTH_MODE=none``, tracing
off), subscribes ``--channels`` clients on each replica to channels of their own, then
produces ``--chunks`` reply chunks spread evenly over all channels (from a child process, as
the router publishes them: schema, request id and channel headers). Every replica reads all
of them: it delivers its own third and skips the rest. CPU is each replica's user+system
time from ``/proc/<pid>/stat`` across the round, also given net of what the replica burns
idle (measured first, for ``--idle-s``). ``--no-channel-header`` produces replies
without the channel header, so every replica must decode every reply to decide (the cost
without the header check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from edge_connections import count_data, open_client, raise_nofile

from tollgate_core import topics
from tollgate_core.bus import EventProducer
from tollgate_core.bus import headers as h
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.bus.codec import encode
from tollgate_core.contracts import ReplyChunkV1, new_request_id
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import TansuBroker, free_port, stop_process

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def produce(bootstrap: str, channels: list[str], per_channel: int, header: bool) -> float:
    producer = EventProducer(KafkaSettings(bootstrap_servers=bootstrap), client_id="bench")
    await producer.start()
    requests = {c: new_request_id() for c in channels}
    encoded = []
    for seq in range(1, per_channel + 1):
        for channel in channels:
            chunk = ReplyChunkV1(
                request_id=requests[channel], principal="bench", seq=seq, channel=channel, text="w "
            )
            headers = [(h.SCHEMA, chunk.SCHEMA.encode()), (h.REQUEST_ID, chunk.request_id.encode())]
            if header:
                headers.append((h.CHANNEL, channel.encode()))
            encoded.append((chunk.request_id, encode(chunk), headers))
    try:
        t0 = time.perf_counter()
        for start in range(0, len(encoded), 5000):
            await asyncio.gather(
                *(
                    producer.send_raw(topics.REPLIES, value, key=key, headers=headers)
                    for key, value, headers in encoded[start : start + 5000]
                )
            )
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def produce_elsewhere(
    bootstrap: str, channels: list[str], per_channel: int, header: bool
) -> float:
    job = {"bootstrap": bootstrap, "channels": channels, "per_channel": per_channel, "h": header}
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--produce", json.dumps(job), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError("producer failed")
    return float(out.decode().strip().splitlines()[-1])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-replicas-"))
    broker = TansuBroker(log_path=workdir / "tansu.log").start()
    await ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap_servers))
    edges: list[tuple[int, subprocess.Popen[bytes]]] = []
    logs = []
    try:
        for i in range(args.replicas):
            port = free_port()
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "TOLLGATE_STREAM_PORT": str(port),
                "TOLLGATE_STREAM_SEND_QUEUE_SIZE": "100000",
                "TOLLGATE_STREAM_AUTH_MODE": "none",
                "OTEL_SDK_DISABLED": "true",
            }
            log = open(workdir / f"stream-{i}.log", "ab")  # noqa: SIM115
            logs.append(log)
            edges.append(
                (
                    port,
                    subprocess.Popen(
                        [str(Path(sys.executable).parent / "tollgate-stream")],
                        env=env,
                        stdout=log,
                        stderr=log,
                    ),
                )
            )
        async with httpx.AsyncClient() as client, asyncio.timeout(90):
            for port, _ in edges:
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.2)
        clients = []
        channels = []
        for i, (port, _) in enumerate(edges):
            host = f"127.0.0.1:{port}"
            for j in range(args.channels):
                channel = f"/Outbound-Messages/r{i}-u{j}"
                clients.append(
                    await open_client(f"ws://{host}/event/realtime", host, channel, None)
                )
                channels.append(channel)
        await asyncio.sleep(1)
        # what a replica burns with no traffic (its fetch loop polling every partition)
        idle0 = [cpu_seconds(p.pid) for _, p in edges]
        t_idle = time.perf_counter()
        await asyncio.sleep(args.idle_s)
        idle_window = time.perf_counter() - t_idle
        idle_rate = [
            (cpu_seconds(p.pid) - c0) / idle_window for (_, p), c0 in zip(edges, idle0, strict=True)
        ]
        per_channel = args.chunks // len(channels)
        total = per_channel * len(channels)
        rounds = []
        for _ in range(args.rounds):
            firsts: list[float] = []
            lasts: list[float] = []
            readers = [
                asyncio.create_task(count_data(ws, per_channel, firsts, lasts)) for ws in clients
            ]
            cpu0 = [cpu_seconds(p.pid) for _, p in edges]
            t0 = time.perf_counter()
            produce_s = await produce_elsewhere(
                broker.bootstrap_servers, channels, per_channel, not args.no_channel_header
            )
            async with asyncio.timeout(300):
                await asyncio.gather(*readers)
            await asyncio.sleep(0.5)  # the replicas' last skips
            cpu = [cpu_seconds(p.pid) - c0 for (_, p), c0 in zip(edges, cpu0, strict=True)]
            window = time.perf_counter() - t0
            net = [c - rate * window for c, rate in zip(cpu, idle_rate, strict=True)]
            elapsed = max(lasts) - min(firsts)
            rounds.append(
                {
                    "replies": total,
                    "delivered_per_replica": total // len(edges),
                    "seconds": elapsed,
                    "replies_per_s": total / elapsed,
                    "produced_per_s": total / produce_s,
                    "cpu_s_per_replica": cpu,
                    "cpu_us_per_reply_per_replica": [c / total * 1e6 for c in cpu],
                    "window_s": window,
                    "net_of_idle_us_per_reply_per_replica": [c / total * 1e6 for c in net],
                }
            )
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
        return {
            "replicas": args.replicas,
            "channels_per_replica": args.channels,
            "channel_header": not args.no_channel_header,
            "idle_cpu_s_per_s": idle_rate,
            "rounds": rounds,
        }
    finally:
        for _, process in edges:
            stop_process(process, timeout=15)
        for log in logs:
            log.close()
        broker.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--produce":
        job = json.loads(sys.argv[2])
        print(asyncio.run(produce(job["bootstrap"], job["channels"], job["per_channel"], job["h"])))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--channels", type=int, default=100, help="subscribers per replica")
    parser.add_argument("--chunks", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-channel-header", action="store_true")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle CPU measured this long")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
