"""Local servers speaking the providers' real wire protocols, for contract tests and the bench.

One :class:`FakeProviderServer` answers all three APIs from a script of :class:`Scenario`
(one per request, the last repeats):

- Bedrock ``POST /model/{id}/converse-stream``: ``application/vnd.amazon.eventstream`` frames
  (CRC-checked prelude and message, string headers), in-stream exception frames, pre-stream
  errors with ``x-amzn-ErrorType``;
- OpenAI ``POST /v1/chat/completions``: SSE chunks, the ``include_usage`` chunk, ``[DONE]``;
- Anthropic ``POST /v1/messages``: SSE ``message_start`` … ``message_stop``, ``error`` events.

A scenario's ``tool_calls`` are streamed after its text the way each API streams them:
OpenAI ``tool_calls`` deltas with indices, Anthropic ``tool_use`` blocks with
``input_json_delta`` pieces, Bedrock ``contentBlockStart``/``contentBlockDelta`` with
``toolUse``; the stop reason is then the API's own word for a tool call.

The event-stream encoder is written here (framing per the AWS event-stream spec) because
botocore only decodes; it is checked against botocore's decoder and boto3 in the tests.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tollgate_core.contracts import Usage
from tollgate_core.http import HttpServer
from tollgate_router.providers.base import (
    Finished,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
)


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack("!B", len(raw_name)) + raw_name
        out += b"\x07" + struct.pack("!H", len(raw_value)) + raw_value
    return bytes(out)


def event_stream_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame: total length, headers length, prelude CRC, headers, payload, message CRC."""
    raw_headers = _headers(headers)
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack("!I", zlib.crc32(message))


def bedrock_event(event_type: str, body: dict[str, Any]) -> bytes:
    return event_stream_frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        json.dumps(body).encode(),
    )


def bedrock_exception(exception_type: str, message: str) -> bytes:
    return event_stream_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    id: str
    name: str
    #: the call's JSON input, streamed in ``pieces`` parts
    arguments: str = "{}"
    pieces: int = 3

    def parts(self) -> list[str]:
        size = max(1, -(-len(self.arguments) // self.pieces))
        return [self.arguments[i : i + size] for i in range(0, len(self.arguments), size)]


@dataclass(frozen=True, slots=True)
class Scenario:
    chunks: tuple[str, ...] = ("Hello", " from", " a", " fake", " model")
    input_tokens: int = 7
    #: pre-stream HTTP error (Bedrock: with x-amzn-ErrorType = error_type)
    status: int = 200
    error_type: str = ""
    #: in-stream failure after this many chunks, of this type
    fail_after: int | None = None
    stream_error: str = "modelStreamErrorException"
    first_delay_s: float = 0.0
    gap_s: float = 0.0
    stop_reason: str = "end_turn"
    #: after this many chunks, one well-framed event whose content breaks the API's shape
    #: (JSON that is not an object; for Bedrock, a frame whose CRC does not match)
    garbage_after: int | None = None
    #: end the stream after the text, before the usage / stop events
    truncate: bool = False
    tool_calls: tuple[FakeToolCall, ...] = ()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeProviderServer:
    script: list[Scenario] = field(default_factory=lambda: [Scenario()])
    received: list[Received] = field(default_factory=list)
    _http: HttpServer | None = None

    def next_scenario(self) -> Scenario:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    @property
    def url(self) -> str:
        if self._http is None:
            raise RuntimeError("not started")
        return f"http://127.0.0.1:{self._http.port}"

    async def start(self, port: int = 0) -> None:
        app = Starlette(
            routes=[
                Route("/model/{model:path}", self._bedrock, methods=["POST"]),
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
            ]
        )
        self._http = HttpServer(app, host="127.0.0.1", port=port)
        await self._http.start()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()

    async def _receive(self, request: Request) -> Scenario:
        body = await request.body()
        self.received.append(
            Received(
                path=request.scope.get("raw_path", b"").decode() or request.url.path,
                headers=dict(request.headers),
                body=json.loads(body) if body else {},
            )
        )
        return self.next_scenario()

    @staticmethod
    async def _paced(s: Scenario) -> AsyncIterator[tuple[int, str]]:
        if s.first_delay_s:
            await asyncio.sleep(s.first_delay_s)
        for i, chunk in enumerate(s.chunks):
            if i and s.gap_s:
                await asyncio.sleep(s.gap_s)
            yield i, chunk

    # -- Bedrock -----------------------------------------------------------------------------

    async def _bedrock(self, request: Request) -> Response:
        s = await self._receive(request)
        if s.status >= 400:
            return JSONResponse(
                {"message": f"fake {s.error_type}"},
                s.status,
                headers={"x-amzn-ErrorType": f"{s.error_type}:http://internal.amazon.com/coral/"},
            )

        async def frames() -> AsyncIterator[bytes]:
            yield bedrock_event("messageStart", {"role": "assistant"})
            async for i, chunk in self._paced(s):
                if s.fail_after is not None and i == s.fail_after:
                    yield bedrock_exception(s.stream_error, "fake in-stream failure")
                    return
                if s.garbage_after is not None and i == s.garbage_after:
                    frame = bytearray(bedrock_event("contentBlockDelta", {"delta": {}}))
                    frame[-1] ^= 0xFF  # the message CRC no longer matches
                    yield bytes(frame)
                    return
                yield bedrock_event(
                    "contentBlockDelta", {"delta": {"text": chunk}, "contentBlockIndex": 0}
                )
            if s.truncate:
                return
            yield bedrock_event("contentBlockStop", {"contentBlockIndex": 0})
            for tool_frame in _bedrock_tool_frames(s.tool_calls):
                yield tool_frame
            stop = "tool_use" if s.tool_calls else s.stop_reason
            yield bedrock_event("messageStop", {"stopReason": stop})
            out = len(s.chunks)
            yield bedrock_event(
                "metadata",
                {
                    "usage": {
                        "inputTokens": s.input_tokens,
                        "outputTokens": out,
                        "totalTokens": s.input_tokens + out,
                    },
                    "metrics": {"latencyMs": 1},
                },
            )

        return StreamingResponse(frames(), media_type="application/vnd.amazon.eventstream")

    # -- OpenAI-compatible -------------------------------------------------------------------

    async def _openai(self, request: Request) -> Response:
        s = await self._receive(request)
        if s.status >= 400:
            return JSONResponse(
                {"error": {"message": "fake error", "type": s.error_type}}, s.status
            )
        model = self.received[-1].body.get("model", "")
        include_usage = (self.received[-1].body.get("stream_options") or {}).get("include_usage")

        def sse(data: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
            async for i, chunk in self._paced(s):
                if s.fail_after is not None and i == s.fail_after:
                    yield sse({"error": {"message": "fake in-stream failure", "code": 503}})
                    return
                if s.garbage_after is not None and i == s.garbage_after:
                    yield b"data: 42\n\n"
                    return
                delta = {"content": chunk} if i else {"role": "assistant", "content": chunk}
                yield sse({**base, "choices": [{"index": 0, "delta": delta}]})
            if s.truncate:
                return
            for i, call in enumerate(s.tool_calls):
                for j, part in enumerate(["", *call.parts()]):
                    item: dict[str, Any] = {"index": i, "function": {"arguments": part}}
                    if j == 0:
                        item.update(id=call.id, type="function")
                        item["function"]["name"] = call.name
                    calls = {"tool_calls": [item]}
                    yield sse({**base, "choices": [{"index": 0, "delta": calls}]})
            finish = "tool_calls" if s.tool_calls else "stop"
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if include_usage:
                usage = {
                    "prompt_tokens": s.input_tokens,
                    "completion_tokens": len(s.chunks),
                    "total_tokens": s.input_tokens + len(s.chunks),
                }
                yield sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- Anthropic ---------------------------------------------------------------------------

    async def _anthropic(self, request: Request) -> Response:
        s = await self._receive(request)
        if s.status >= 400:
            return JSONResponse(
                {"type": "error", "error": {"type": s.error_type, "message": "fake error"}},
                s.status,
            )

        def sse(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            yield sse(
                "message_start",
                {
                    "message": {
                        "id": "msg_1",
                        "role": "assistant",
                        "usage": {"input_tokens": s.input_tokens, "output_tokens": 1},
                    }
                },
            )
            yield sse(
                "content_block_start",
                {"index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield b'event: ping\ndata: {"type": "ping"}\n\n'
            async for i, chunk in self._paced(s):
                if s.fail_after is not None and i == s.fail_after:
                    yield sse(
                        "error", {"error": {"type": s.stream_error, "message": "fake failure"}}
                    )
                    return
                if s.garbage_after is not None and i == s.garbage_after:
                    yield b"event: content_block_delta\ndata: [1, 2]\n\n"
                    return
                yield sse(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": chunk}},
                )
            if s.truncate:
                return
            yield sse("content_block_stop", {"index": 0})
            for i, call in enumerate(s.tool_calls, start=1):
                block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
                yield sse("content_block_start", {"index": i, "content_block": block})
                for part in call.parts():
                    piece = {"type": "input_json_delta", "partial_json": part}
                    yield sse("content_block_delta", {"index": i, "delta": piece})
                yield sse("content_block_stop", {"index": i})
            yield sse(
                "message_delta",
                {
                    "delta": {"stop_reason": "tool_use" if s.tool_calls else s.stop_reason},
                    "usage": {"output_tokens": len(s.chunks)},
                },
            )
            yield sse("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")


def _bedrock_tool_frames(calls: tuple[FakeToolCall, ...]) -> list[bytes]:
    frames: list[bytes] = []
    for index, call in enumerate(calls, start=1):
        start = {"toolUse": {"toolUseId": call.id, "name": call.name}}
        frames.append(
            bedrock_event("contentBlockStart", {"start": start, "contentBlockIndex": index})
        )
        for part in call.parts():
            delta = {"toolUse": {"input": part}}
            frames.append(
                bedrock_event("contentBlockDelta", {"delta": delta, "contentBlockIndex": index})
            )
        frames.append(bedrock_event("contentBlockStop", {"contentBlockIndex": index}))
    return frames


@dataclass
class Step:
    """One call of a :class:`ScriptedProvider`: fail before any token with ``error``, or
    stream ``chunks`` (waiting ``first_delay_s`` then ``gap_s``) and fail after ``fail_after``
    of them with ``error``, or finish with ``usage``."""

    chunks: tuple[str, ...] = ("a", " b", " c")
    error: Exception | None = None
    fail_after: int | None = None
    first_delay_s: float = 0.0
    gap_s: float = 0.0
    input_tokens: int = 5
    tool_calls: tuple[FakeToolCall, ...] = ()


class ScriptedProvider:
    """An in-process provider following a script, one :class:`Step` per call (the last repeats)."""

    def __init__(self, name: str, steps: list[Step] | None = None) -> None:
        self.name = name
        self.steps = steps or [Step()]
        self.calls: list[ProviderRequest] = []

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        self.calls.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if step.error is not None and step.fail_after is None:
            raise step.error
        if step.first_delay_s:
            await asyncio.sleep(step.first_delay_s)
        for i, chunk in enumerate(step.chunks):
            if step.fail_after is not None and i == step.fail_after and step.error is not None:
                raise step.error
            if i and step.gap_s:
                await asyncio.sleep(step.gap_s)
            yield TextDelta(chunk)
        for index, call in enumerate(step.tool_calls):
            yield ToolUseDelta(index, id=call.id, name=call.name)
            for part in call.parts():
                yield ToolUseDelta(index, arguments=part)
        usage = Usage(input_tokens=step.input_tokens, output_tokens=len(step.chunks))
        yield Finished(usage, "tool_use" if step.tool_calls else "end_turn")
