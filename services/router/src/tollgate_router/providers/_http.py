"""What the HTTP providers share: one pooled httpx client per provider, SSE framing, and the
translation of httpx's exceptions into the router's error tree."""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tollgate_router.errors import ProviderTimeout, ProviderUnavailable


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every provider client: building one loads the CA bundle
    (~20 ms), and a provider has a client per shard."""
    return httpx.create_ssl_context()


#: how long an idle pooled connection to a provider is kept. Shorter than the shortest
#: keep-alive common among model servers (5 s: uvicorn, so vLLM and most Python servers, and
#: Node), so the router drops an idle connection before the server does: reused just as the
#: server closed it, a connection fails the request with a ReadError (a quarter of a burst
#: of 100 requests after 4.95 s idle, against uvicorn, with httpx's default of 5 s).
KEEPALIVE_EXPIRY_S = 4.0

#: how a pooled connection the server had already closed fails a request before any byte of
#: an answer: such a request is sent once more (:func:`_send`)
_CLOSED_UNDER_US = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def make_client(*, connect_timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """Connect timeout only: time to first token, idle gap and total are enforced above."""
    return httpx.AsyncClient(
        verify=_tls_context(),
        timeout=httpx.Timeout(None, connect=connect_timeout_s, pool=connect_timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        ),
    )


async def _send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The response's head. A request that fails before any byte of one came back, the way a
    pooled connection closed by the server fails, is sent once more: the server answered
    nothing, and failing it would count against the provider's circuit breaker, which a
    burst of such failures (a burst after a quiet spell) opens."""
    try:
        return await client.send(client.build_request(method, url, **kwargs), stream=True)
    except _CLOSED_UNDER_US:
        return await client.send(client.build_request(method, url, **kwargs), stream=True)


class ClientShards:
    """Several small pooled clients. httpcore scans its whole pool (every connection's
    idle/expiry state, with a socket poll) each time a request is assigned or released, so one
    pool of N connections costs O(N) per request; pools of ``shard_size`` keep that cost flat
    when a provider carries a thousand concurrent streams (measured in bench/router.md). Each
    request goes to the shard with the fewest requests in flight, so a full shard never makes
    a request wait while another has room."""

    def __init__(
        self, *, connect_timeout_s: float, max_connections: int, shard_size: int = 8
    ) -> None:
        count = max(1, -(-max_connections // shard_size))
        self._clients = [
            make_client(connect_timeout_s=connect_timeout_s, max_connections=shard_size)
            for _ in range(count)
        ]
        self._busy = [0] * count

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            response = await _send(self._clients[index], method, url, **kwargs)
            try:
                yield response
            finally:
                await response.aclose()
        finally:
            busy[index] -= 1

    @property
    def in_flight(self) -> int:
        return sum(self._busy)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


Clients = httpx.AsyncClient | ClientShards


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
    except httpx.HTTPError as exc:  # a body that does not decode, a protocol violation…
        raise ProviderUnavailable(f"{provider}: {type(exc).__name__}: {exc}") from exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # well-framed but not what the API promises: a number where an object belongs,
        # a token count that is not one
        raise ProviderUnavailable(
            f"{provider}: malformed response: {type(exc).__name__}: {exc}"
        ) from exc


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
    """Server-sent events (WHATWG framing: ``event:``/``data:`` lines, a blank line
    dispatches). Parsed from raw bytes: httpx's text and line decoders cost more per network
    read than the framing itself, and a token stream is one read per token."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                continue  # a \n may follow in the next read
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                yield event
    if buffer.strip():
        event = _parse_block(buffer.replace(b"\r", b"\n"))
        if event is not None:
            yield event


def _parse_block(block: bytes) -> SSEEvent | None:
    name = ""
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        field, _, value = raw.decode("utf-8", "replace").partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return SSEEvent(name or "message", "\n".join(data))
