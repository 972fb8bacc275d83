"""Deleting what no window and no redelivery can need any more."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate_meter.adapters.postgres.store import Store
from tollgate_meter.limits import oldest_bucket_needed

#: a calendar-month window (and the month's by-model report) reaches back at most this far
LONGEST_MONTH = timedelta(days=31)

_OLD_BUCKETS = text(
    "DELETE FROM meter.buckets WHERE bucket_start < :oldest AND"
    " reserved_input = 0 AND reserved_output = 0"
)
_OLD_PERIODS = text("DELETE FROM meter.periods WHERE period_start < :year_ago")
_OLD_RESERVATIONS = text(
    "DELETE FROM meter.reservations WHERE request_id IN ("
    " SELECT request_id FROM meter.reservations"
    " WHERE status <> 'reserved' AND created_at < :cutoff"
    " AND (settled_at IS NULL OR settled_at < :cutoff)"
    " ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
)


class PruningSql(Store):
    async def prune(self, now: datetime) -> int:
        """Delete buckets no window can reach any more (and month periods over a year old)."""

        async def prune(conn: AsyncConnection) -> int:
            oldest = oldest_bucket_needed(await self._all_windows(conn), now, self._bucket_seconds)
            deleted = await conn.execute(_OLD_BUCKETS, {"oldest": oldest})
            await conn.execute(_OLD_PERIODS, {"year_ago": date(now.year - 1, now.month, 1)})
            return int(deleted.rowcount)

        return await self._run(prune)

    async def prune_reservations(self, now: datetime, margin: timedelta, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished reservation rows (settled, released or rejected)
        older than the longest window — at least a month, which the by-model usage report
        reads — plus ``margin``; return how many went.

        These rows are what makes redeliveries harmless: a request is decided once and a usage
        record settled once *because its row is still there*. A replayed usage record whose
        row is gone would count again, so ``margin`` must exceed how long Kafka may still hand
        a record out. A row's age runs from its settlement if it was settled, else from its
        creation. Open reservations are never pruned (the sweeper releases them first).
        """

        async def prune(conn: AsyncConnection) -> int:
            oldest = oldest_bucket_needed(await self._all_windows(conn), now, self._bucket_seconds)
            cutoff = min(oldest, now - LONGEST_MONTH) - margin
            deleted = await conn.execute(_OLD_RESERVATIONS, {"cutoff": cutoff, "limit": limit})
            return int(deleted.rowcount)

        return await self._run(prune)
