"""What the edge bounds before it spends memory on a client: request bodies read in chunks
up to a cap, JSON nesting depth, and open WebSocket connections per process and per client
address. The numbers are settings (``TOLLGATE_STREAM_*``, see docs/operations.md)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from starlette.requests import Request


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class JsonTooDeep(ValueError):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit``: from a
    ``content-length`` before anything is read, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def loads(text: str | bytes, max_depth: int) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` with a ``ValueError``
    (:class:`JsonTooDeep`), never a ``RecursionError``."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise JsonTooDeep(f"JSON is nested deeper than {max_depth} levels") from exc
    if depth_exceeds(value, max_depth):
        raise JsonTooDeep(f"JSON is nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class ConnectionLimiter:
    """Open WebSocket connections, at most ``per_process`` in all and ``per_address`` from
    one client address."""

    def __init__(self, per_process: int, per_address: int) -> None:
        self._per_process = per_process
        self._per_address = per_address
        self._by_address: Counter[str] = Counter()
        self._total = 0

    def acquire(self, address: str) -> str | None:
        """Take a slot, or say why not."""
        if self._total >= self._per_process:
            return f"this server holds its maximum of {self._per_process} connections"
        if self._by_address[address] >= self._per_address:
            return f"at most {self._per_address} connections per client address"
        self._total += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self._total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    @property
    def open(self) -> int:
        return self._total
