"""A steady load of concurrent OpenAI streams from several principals, and what each caller
saw: the request's id, its HTTP status, and the terminal replies its stream carried."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    """One call as its client saw it. ``accepted``: the edge answered (a stream, or a typed
    error body); ``cut``: the connection died before a terminal reply (the edge was killed)."""

    principal: str
    #: the fault under way when the call was made
    phase: str = ""
    status: int | None = None
    request_id: str | None = None
    error_type: str | None = None
    finishes: int = 0
    errors: int = 0
    done_markers: int = 0
    cut: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is not None

    @property
    def terminals(self) -> int:
        """Terminal replies the client got: a finished stream, an error event in the stream,
        or an error response."""
        if self.status is not None and self.status != 200:
            return 1 if self.error_type else 0
        return self.finishes + self.errors


@dataclass
class Load:
    """``workers`` concurrent callers per principal, each calling again as soon as its last
    call ended, until ``stop()``."""

    edge_url: str
    tokens: dict[str, str]
    workers: int = 2
    max_tokens: int = 20
    pause_s: float = 0.2
    outcomes: list[Outcome] = field(default_factory=list)
    #: the fault under way, recorded with each call
    phase: str = "steady"
    _running: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for principal in self.tokens:
            for _ in range(self.workers):
                self._tasks.append(asyncio.create_task(self._worker(principal)))

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def _worker(self, principal: str) -> None:
        headers = {"authorization": f"Bearer {self.tokens[principal]}"}
        timeout = httpx.Timeout(90, connect=2)
        async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
            while self._running:
                outcome = Outcome(principal, self.phase)
                self.outcomes.append(outcome)
                await self._call(client, outcome)
                await asyncio.sleep(self.pause_s)

    async def _call(self, client: httpx.AsyncClient, outcome: Outcome) -> None:
        body = {
            "model": "tollgate-local",
            "messages": [{"role": "user", "content": f"a story for {outcome.principal}"}],
            "max_tokens": self.max_tokens,
            "stream": True,
        }
        try:
            async with client.stream(
                "POST", f"{self.edge_url}/v1/chat/completions", json=body
            ) as response:
                outcome.status = response.status_code
                outcome.request_id = response.headers.get("x-request-id")
                if response.status_code != 200:
                    error = json.loads(await response.aread()).get("error") or {}
                    outcome.error_type = error.get("type")
                    return
                await read_stream(response, outcome)
        except httpx.ConnectError:
            return  # never reached the edge: not accepted
        except (httpx.TransportError, json.JSONDecodeError):
            outcome.cut = True


async def read_stream(response: httpx.Response, outcome: Outcome) -> None:
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            outcome.done_markers += 1
            continue
        event = json.loads(data)
        if outcome.request_id is None and "id" in event:
            outcome.request_id = str(event["id"]).removeprefix("chatcmpl-")
        if "error" in event:
            outcome.errors += 1
            outcome.error_type = event["error"].get("type")
        for choice in event.get("choices") or ():
            if choice.get("finish_reason"):
                outcome.finishes += 1


def summary(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    """Counts by fault and by what the callers saw, for the report of a run."""
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = "not accepted" if not o.accepted else "cut" if o.cut else str(o.status)
        if o.error_type:
            key += f" {o.error_type}"
        phase = counts.setdefault(o.phase, {})
        phase[key] = phase.get(key, 0) + 1
    return counts
