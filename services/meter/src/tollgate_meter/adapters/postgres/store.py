"""What every part of the Postgres ledger shares: the engine and how an operation runs on
it, the tier overrides cache, and reading a principal's limits and counters."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollgate_core import db
from tollgate_core.settings import DatabaseSettings
from tollgate_meter.limits import (
    Bucket,
    TierConfig,
    TierSpec,
    Totals,
    WindowSpec,
    WindowUsage,
    month_start,
    oldest_bucket_needed,
    window_usage,
)

T = TypeVar("T")

#: a principal's limits: the tier's name and the windows that apply
Limits = tuple[str, tuple[WindowSpec, ...]]


def create_engine(settings: DatabaseSettings, *, application_name: str = "meter") -> AsyncEngine:
    """The meter's engine: no ping on checkout; the ledger retries a dead connection once."""
    return db.create_engine(settings, application_name=application_name, pre_ping=False)


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        config: TierConfig,
        *,
        bucket_seconds: int,
        tier_cache_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._config = config
        self._bucket_seconds = bucket_seconds
        self._tier_cache_s = tier_cache_s
        self._tiers: tuple[float, dict[str, TierSpec]] = (0.0, {})

    async def _run(
        self,
        body: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool = True,
        single: bool = False,
    ) -> T:
        """``body`` through :func:`tollgate_core.db.run` (once more on a fresh connection
        after a dead pooled one); Postgres trouble becomes :class:`DependencyUnavailable`."""
        async with db.translated():
            return await db.run(self._engine, body, write=write, single=single)

    def _resolve(
        self,
        owner: Any,
        groups: Sequence[str],
        overrides: dict[str, TierSpec],
        policy_tier: str | None = None,
    ) -> Limits:
        """The limits of a principal whose ``meter.principals`` row is ``owner``."""
        name, tier = self._config.tier_for(groups, overrides, owner.tier, policy_tier)
        if owner.windows is not None:
            return name, tuple(WindowSpec.model_validate(w) for w in owner.windows)
        return name, tier.windows

    async def _tier_overrides(self, conn: AsyncConnection) -> dict[str, TierSpec]:
        loaded_at, tiers = self._tiers
        if time.monotonic() - loaded_at > self._tier_cache_s:
            rows = (await conn.execute(text("SELECT name, spec FROM meter.tiers"))).all()
            tiers = {r.name: TierSpec.model_validate(r.spec) for r in rows}
            self._tiers = (time.monotonic(), tiers)
        return tiers

    def _forget_tiers(self) -> None:
        self._tiers = (0.0, {})

    async def _all_windows(self, conn: AsyncConnection) -> list[WindowSpec]:
        """Every window any principal may be limited by: the file's tiers, admin-set tiers and
        per-principal windows."""
        windows = [w for t in self._config.tiers.values() for w in t.windows]
        windows += [w for t in (await self._tier_overrides(conn)).values() for w in t.windows]
        rows = (
            await conn.execute(
                text("SELECT windows FROM meter.principals WHERE windows IS NOT NULL")
            )
        ).all()
        windows += [WindowSpec.model_validate(w) for r in rows for w in r.windows]
        return windows

    async def _counters(
        self, conn: AsyncConnection, principal: str, oldest: datetime, now: datetime
    ) -> tuple[list[Bucket], Bucket | None]:
        """The principal's buckets since ``oldest`` and this month's counters."""
        rows = (
            await conn.execute(
                text(
                    "SELECT bucket_start, input_tokens, output_tokens, reserved_input,"
                    " reserved_output, requests FROM meter.buckets"
                    " WHERE principal = :p AND bucket_start >= :oldest"
                ),
                {"p": principal, "oldest": oldest},
            )
        ).all()
        row = (
            await conn.execute(
                text(
                    "SELECT period_start, input_tokens, output_tokens, reserved_input,"
                    " reserved_output, requests FROM meter.periods"
                    " WHERE principal = :p AND period_start = :m"
                ),
                {"p": principal, "m": month_start(now)},
            )
        ).first()
        return [bucket(r.bucket_start, r) for r in rows], None if row is None else bucket(now, row)

    async def _usages(
        self, conn: AsyncConnection, principal: str, windows: Sequence[WindowSpec], now: datetime
    ) -> list[WindowUsage]:
        oldest = oldest_bucket_needed(windows, now, self._bucket_seconds)
        buckets, month = await self._counters(conn, principal, oldest, now)
        return [window_usage(w, buckets, month, now, self._bucket_seconds) for w in windows]


def bucket(start: datetime, row: Any) -> Bucket:
    """A counters row (a result row, or :class:`Counters` over JSON) as a :class:`Bucket`."""
    return Bucket(
        start=start,
        used=Totals(int(row.input_tokens), int(row.output_tokens), int(row.requests)),
        reserved=Totals(int(row.reserved_input), int(row.reserved_output), 0),
    )
