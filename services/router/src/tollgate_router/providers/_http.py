"""What the HTTP providers share: one pooled httpx client per provider, SSE framing, and the
translation of httpx's exceptions into the router's error tree."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx

from tollgate_router.errors import ProviderTimeout, ProviderUnavailable


def make_client(*, connect_timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """Connect timeout only: time to first token, idle gap and total are enforced above."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=connect_timeout_s, pool=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100),
    )


@contextlib.contextmanager
def translate_httpx(provider: str) -> Iterator[None]:
    try:
        yield
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise ProviderTimeout(f"{provider}: connect timeout") from exc
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{provider}: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"{provider}: {type(exc).__name__}: {exc}") from exc


def error_message(body: bytes) -> str:
    """The human message of a provider's JSON error body, else the body's start."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("Message") or err)
        return str(err)
    return str(data)[:200]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Server-sent events (WHATWG framing: ``event:``/``data:`` lines, blank line dispatches)."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event or "message", "\n".join(data))
