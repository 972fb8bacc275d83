"""The one backoff every retry loop in Tollgate uses: exponential delays between a first and
a largest, optionally jittered, with a wait that ends early when the process stops."""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Delays of ``initial_s``, then twice the last, up to ``max_s``; :meth:`reset` after a
    success starts again from ``initial_s``. With ``jitter`` each wait is 0.5 to 1.5 times its
    delay, so replicas that failed together do not retry together."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 15.0, *, jitter: bool = False):
        self._initial = initial_s
        self._max = max(max_s, initial_s)
        self._jitter = jitter
        self.delay = initial_s
        self.failures = 0

    def reset(self) -> None:
        self.delay = self._initial
        self.failures = 0

    def next_delay(self) -> float:
        """The delay to wait now (the count of failures goes up by one; the next is longer)."""
        delay = self.delay
        self.failures += 1
        self.delay = min(delay * 2, self._max)
        if self._jitter:
            delay *= 0.5 + random.random()  # noqa: S311 - jitter, not crypto
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the next delay; False when ``stop`` was set before or during the wait."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        return not stop.is_set()
