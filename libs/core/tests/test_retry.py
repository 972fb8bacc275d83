"""The shared backoff: doubling delays up to a cap, reset after success, a wait that ends
when the process stops."""

from __future__ import annotations

import asyncio
import time

from tollgate_core.retry import Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_a_reset() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5
    backoff.reset()
    assert (backoff.next_delay(), backoff.failures) == (0.5, 1)


def test_jitter_keeps_each_wait_within_half_and_one_and_a_half_times_its_delay() -> None:
    backoff = Backoff(1.0, 1.0, jitter=True)
    waits = [backoff.next_delay() for _ in range(200)]
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 1


async def test_a_wait_ends_as_soon_as_stop_is_set() -> None:
    stop = asyncio.Event()
    backoff = Backoff(30.0, 30.0)
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await backoff.wait(stop) is False
    assert time.monotonic() - started < 5
    assert await Backoff(0.01).wait(asyncio.Event()) is True
