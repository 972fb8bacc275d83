"""Coalescing of text deltas into reply chunks: the first delta goes out at once (time to
first token is what users feel), later ones are buffered until ``delay_s`` has passed since
the last chunk or ``max_chars`` are pending. Flushing happens when a delta arrives or the
stream ends, so no timer task runs per stream; a buffered tail waits at most one token gap."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Coalescing:
    delay_s: float = 0.05
    max_chars: int = 512


class ChunkWriter:
    def __init__(
        self,
        emit: Callable[[str], Awaitable[None]],
        policy: Coalescing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._policy = policy
        self._clock = clock
        self._pending: list[str] = []
        self._size = 0
        self._last = 0.0
        self.chunks = 0
        self.text_chars = 0
        self.sent: list[str] = []

    async def write(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)
        if (
            self.chunks == 0
            or self._size >= self._policy.max_chars
            or self._clock() - self._last >= self._policy.delay_s
        ):
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._last = self._clock()
        self.chunks += 1
        self.text_chars += len(text)
        self.sent.append(text)
        await self._emit(text)
