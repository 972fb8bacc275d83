"""A local OpenAI-compatible chat completions server for the gateway benchmark.

It answers ``POST /v1/chat/completions`` (streaming and not) after ``--ttft-ms``, with
``--tokens`` one-token chunks ``--inter-token-ms`` apart (0: all written at once) and the
usage on a last chunk when ``stream_options.include_usage`` asks for it, as OpenAI does.
``GET /v1/models`` lists one model. A raw ASGI app on uvicorn: as little of its own cost as
a Python server can have, so the "direct" figures are the floor every gateway adds to.

    .venv/bin/python bench/fake_upstream.py --port 9100 --tokens 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Upstream:
    def __init__(self, *, ttft_ms: float, tokens: int, inter_token_ms: float) -> None:
        self.ttft_s = ttft_ms / 1000
        self.tokens = tokens
        self.inter_token_s = inter_token_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if scope["method"] == "GET" and path.endswith("/models"):
            body = {"object": "list", "data": [{"id": "bench", "object": "model"}]}
            await _json(send, 200, body)
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await _json(send, 404, {"error": {"message": "not found", "type": "not_found"}})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(raw)
        model = request.get("model", "bench")
        prompt = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        usage = {
            "prompt_tokens": max(1, prompt // 4),
            "completion_tokens": self.tokens,
            "total_tokens": max(1, prompt // 4) + self.tokens,
        }
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        if not request.get("stream"):
            await _json(send, 200, _completion(model, self.tokens, usage))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def sse(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        parts = [sse({"role": "assistant", "content": ""})]
        for i in range(self.tokens):
            parts.append(sse({"content": f" w{i}"}))
            if self.inter_token_s:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )
                parts = []
                await asyncio.sleep(self.inter_token_s)
        parts.append(sse({}, "stop"))
        if include_usage:
            final = {"id": chunk_id, "object": "chat.completion.chunk", "created": created}
            final |= {"model": model, "choices": [], "usage": usage}
            parts.append(b"data: " + json.dumps(final).encode() + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"".join(parts)})


def _completion(model: str, tokens: int, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(f" w{i}" for i in range(tokens)),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--inter-token-ms", type=float, default=0.0)
    args = parser.parse_args()
    app = Upstream(ttft_ms=args.ttft_ms, tokens=args.tokens, inter_token_ms=args.inter_token_ms)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=2048
    )


if __name__ == "__main__":
    main()
