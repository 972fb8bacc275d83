"""Background upkeep: release reservations that never settled, prune old buckets, and keep
the Postgres readiness check current while no traffic flows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from prometheus_client import Counter

from tollgate_core.errors import DependencyUnavailable
from tollgate_core.health import Health
from tollgate_meter.adapters.ledger import Ledger

logger = logging.getLogger(__name__)

RELEASED = Counter("tollgate_meter_reservations_released_total", "Reservations never settled")
PRUNED = Counter("tollgate_meter_buckets_pruned_total", "Old buckets deleted")


class Sweeper:
    def __init__(
        self,
        ledger: Ledger,
        health: Health,
        clock: Callable[[], datetime],
        ping: Callable[[], Awaitable[None]],
        *,
        ttl_s: int,
        interval_s: float,
    ) -> None:
        self._ledger = ledger
        self._health = health
        self._clock = clock
        self._ping = ping
        self._ttl = timedelta(seconds=ttl_s)
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        now = self._clock()
        released = await self._ledger.release_expired(now - self._ttl)
        pruned = await self._ledger.prune(now)
        RELEASED.inc(released)
        PRUNED.inc(pruned)
        if released:
            logger.info("released %d reservations that never settled", released)
        return released

    async def _run(self) -> None:
        while True:
            try:
                await self._ping()
                self._health.ok("postgres")
                await self.sweep_once()
            except DependencyUnavailable as exc:
                self._health.fail("postgres", exc.message)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="meter-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
