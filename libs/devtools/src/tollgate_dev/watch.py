"""``tollgate-watch <sub>``: subscribe to ``/Outbound-Messages/<sub>/*`` and print what
arrives: a small AppSync Events client for trying the gateway from a terminal (the README
shows the curl command that publishes to it)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys

import websockets


def _subprotocols(host: str, token: str | None) -> list[str]:
    headers = {"host": host}
    if token:
        headers["Authorization"] = token
    encoded = base64.urlsafe_b64encode(json.dumps(headers).encode()).decode().rstrip("=")
    return ["aws-appsync-event-ws", f"header-{encoded}"]


async def watch(url: str, channel: str, token: str | None, text_only: bool) -> None:
    host = url.split("://", 1)[1].split("/", 1)[0]
    async with websockets.connect(
        f"{url}/event/realtime",
        subprotocols=_subprotocols(host, token),  # type: ignore[arg-type]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "watch",
                    "channel": channel,
                    "authorization": {"Authorization": token} if token else {},
                }
            )
        )
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "ka":
                continue
            if message.get("type") != "data":
                sys.stderr.write(json.dumps(message) + "\n")
                continue
            event = json.loads(message["event"])
            if not text_only:
                sys.stdout.write(json.dumps(event) + "\n")
            elif "contentBlockDelta" in event:
                sys.stdout.write(event["contentBlockDelta"]["delta"].get("text", ""))
            elif "metadata" in event:
                sys.stdout.write(f"\n[usage {json.dumps(event['metadata']['usage'])}]\n")
            elif "error" in event:
                sys.stdout.write(f"\n[error {json.dumps(event['error'])}]\n")
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("sub", help="whose outbound channel to watch")
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--token", default=None, help="a JWT or API key, when auth is on")
    parser.add_argument("--raw", action="store_true", help="print every event as JSON")
    args = parser.parse_args()
    channel = f"/Outbound-Messages/{args.sub}/*"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args.url, channel, args.token, text_only=not args.raw))
