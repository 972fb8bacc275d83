"""Background upkeep: release reservations that never settled, prune old buckets and old
finished reservations, and keep the Postgres readiness check current while no traffic flows.

The loop must outlive any one failure: if it stopped, expired reservations would hold their
principals' budgets for ever. Postgres being down is expected (readiness says so and the next
round tries again); any other error is logged with its traceback and counted in
``tollgate_meter_sweep_errors_total``, and the loop backs off (doubling up to
``max_backoff_s``) before the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from prometheus_client import Counter

from tollgate_core.errors import DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.retry import Backoff
from tollgate_core.runtime import BackgroundLoop
from tollgate_meter.ports import Upkeep

logger = logging.getLogger(__name__)

RELEASED = Counter("tollgate_meter_reservations_released_total", "Reservations never settled")
PRUNED = Counter("tollgate_meter_buckets_pruned_total", "Old buckets deleted")
PRUNED_RESERVATIONS = Counter(
    "tollgate_meter_reservations_pruned_total", "Finished reservation rows deleted"
)
ERRORS = Counter("tollgate_meter_sweep_errors_total", "Sweeper rounds that failed unexpectedly")


class Sweeper(BackgroundLoop):
    task_name = "meter-sweeper"

    def __init__(
        self,
        ledger: Upkeep,
        health: Health,
        clock: Callable[[], datetime],
        ping: Callable[[], Awaitable[None]],
        *,
        ttl_s: int,
        interval_s: float,
        margin_s: int = 14 * 86_400,
        max_backoff_s: float = 300.0,
        prune_batch: int = 1000,
        prune_batches: int = 20,
        release_batch: int = 500,
    ) -> None:
        self._release_batch = release_batch
        self._ledger = ledger
        self._health = health
        self._clock = clock
        self._ping = ping
        self._ttl = timedelta(seconds=ttl_s)
        self._interval = interval_s
        self._max_backoff = max(max_backoff_s, interval_s)
        self._margin = timedelta(seconds=margin_s)
        self._prune_batch = prune_batch
        self._prune_batches = prune_batches

    async def sweep_once(self) -> int:
        now = self._clock()
        cutoff = now - self._ttl
        released = await self._in_batches(  # a backlog (a router outage) goes in one round
            lambda size: self._ledger.release_expired(cutoff, size), self._release_batch
        )
        pruned = await self._ledger.prune(now)
        RELEASED.inc(released)
        PRUNED.inc(pruned)
        if released:
            logger.info("released %d reservations that never settled", released)
        deleted = await self._in_batches(
            lambda size: self._ledger.prune_reservations(now, self._margin, size),
            self._prune_batch,
        )
        PRUNED_RESERVATIONS.inc(deleted)
        if deleted:
            logger.info("pruned %d finished reservations", deleted)
        return released

    async def _in_batches(self, step: Callable[[int], Awaitable[int]], size: int) -> int:
        """``step(size)`` in short transactions until one does less than ``size`` rows, at
        most ``prune_batches`` of them a round (what is left goes next round)."""
        total = 0
        for _ in range(self._prune_batches):
            done = await step(size)
            total += done
            if done < size:
                break
        return total

    async def _round(self) -> None:
        try:
            await self._ping()
        except DependencyUnavailable as exc:
            self._health.fail("postgres", exc.message)
            return
        self._health.ok("postgres")
        try:
            await self.sweep_once()
        except DependencyUnavailable as exc:  # Postgres went away between ping and sweep
            self._health.fail("postgres", exc.message)

    async def _run(self) -> None:
        backoff = Backoff(self._interval * 2, self._max_backoff)
        while True:
            delay = self._interval
            try:
                await self._round()
                backoff.reset()
            except Exception:
                ERRORS.inc()
                delay = backoff.next_delay()
                logger.exception(
                    "meter sweep failed (%d in a row); trying again in %.1f s",
                    backoff.failures,
                    delay,
                )
            await asyncio.sleep(delay)
