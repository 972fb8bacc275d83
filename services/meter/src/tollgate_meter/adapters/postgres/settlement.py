"""Settlement (usage replaces a reservation, once) and the release of reservations that
never settled. Counters change by atomic ``x = x + …`` statements, bucket before month,
each in key order: the order admission takes them in, so no two transactions wait for each
other in a cycle."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate_core.contracts import UsageRecordV1
from tollgate_meter.adapters.postgres.store import Store
from tollgate_meter.limits import bucket_start, month_start

_BUMP = """
INSERT INTO meter.{table} (principal, {key}, input_tokens, output_tokens, reserved_input,
                          reserved_output, requests)
VALUES (:principal, :key, :input, :output, :reserved_input, :reserved_output, :requests)
ON CONFLICT (principal, {key}) DO UPDATE SET
  input_tokens = meter.{table}.input_tokens + EXCLUDED.input_tokens,
  output_tokens = meter.{table}.output_tokens + EXCLUDED.output_tokens,
  reserved_input = meter.{table}.reserved_input + EXCLUDED.reserved_input,
  reserved_output = meter.{table}.reserved_output + EXCLUDED.reserved_output,
  requests = meter.{table}.requests + EXCLUDED.requests
"""
_BUMP_BUCKET = text(_BUMP.format(table="buckets", key="bucket_start"))
_BUMP_PERIOD = text(_BUMP.format(table="periods", key="period_start"))
_SETTLE_MANY = text(
    "SELECT meter.settle_usages(CAST(:r AS text[]), CAST(:p AS text[]), CAST(:m AS text[]),"
    " CAST(:i AS integer[]), CAST(:o AS integer[]), CAST(:c AS numeric[]), :now,"
    " CAST(:b AS timestamptz[]), CAST(:per AS date[]))"
)
_EXPIRED = text(
    "SELECT request_id, principal, bucket_start, period_start, reserved_input,"
    " reserved_output FROM meter.reservations"
    " WHERE status = 'reserved' AND created_at < :cutoff"
    " ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED"
)
_RELEASED = text(
    "UPDATE meter.reservations SET status = 'released', released_at = now()"
    " WHERE request_id = ANY(CAST(:ids AS text[]))"
)


class SettlementSql(Store):
    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        """Replace the request's reservation by its usage, once (False: already settled).
        Usage of a request this ledger never admitted (admitted while it failed open, say)
        is recorded too, so the ledger still equals the usage stream: in the bucket and month
        it happened in, never later than now. A batch of one of :meth:`settle_many`."""
        return (await self.settle_many([usage], now))[0]

    async def settle_many(self, usages: Sequence[UsageRecordV1], now: datetime) -> list[bool]:
        """:meth:`settle` for several records in one statement (``meter.settle_usages()``),
        one transaction; a request named twice is settled by its first record."""
        first: dict[str, int] = {}
        for n, usage in enumerate(usages):
            first.setdefault(usage.request_id, n)
        batch = [usages[first[r]] for r in sorted(first)]
        at = [_when(u.occurred_at, now) for u in batch]
        params = {
            "r": [u.request_id for u in batch],
            "p": [u.principal for u in batch],
            "m": [u.model for u in batch],
            "i": [u.usage.input_tokens for u in batch],
            "o": [u.usage.output_tokens for u in batch],
            "c": [u.cost_usd for u in batch],
            "now": now,
            "b": [bucket_start(t, self._bucket_seconds) for t in at],
            "per": [month_start(t) for t in at],
        }

        async def settle(conn: AsyncConnection) -> set[str]:
            return set((await conn.execute(_SETTLE_MANY, params)).scalars())

        settled = await self._run(settle, single=True)
        return [u.request_id in settled and first[u.request_id] == n for n, u in enumerate(usages)]

    async def release_expired(self, cutoff: datetime, limit: int = 500) -> int:
        """Give back the reservations of requests that never settled (their router died and
        the request was never redelivered, say)."""

        async def release(conn: AsyncConnection) -> int:
            rows = (await conn.execute(_EXPIRED, {"cutoff": cutoff, "limit": limit})).all()
            for statement, totals in _given_back(rows):
                for (principal, key), (reserved_in, reserved_out) in sorted(totals.items()):
                    await conn.execute(
                        statement,
                        {
                            "principal": principal,
                            "key": key,
                            "input": 0,
                            "output": 0,
                            "reserved_input": reserved_in,
                            "reserved_output": reserved_out,
                            "requests": 0,
                        },
                    )
            if rows:
                await conn.execute(_RELEASED, {"ids": [row.request_id for row in rows]})
            return len(rows)

        return await self._run(release)


def _given_back(rows: Sequence[Any]) -> list[tuple[Any, dict[tuple[str, Any], list[int]]]]:
    """What released reservations give back, per bucket and per month: every bucket, then
    every month, the order admission and settlement take them in."""
    buckets: dict[tuple[str, Any], list[int]] = {}
    periods: dict[tuple[str, Any], list[int]] = {}
    for row in rows:
        for totals, key in (
            (buckets, (row.principal, row.bucket_start)),
            (periods, (row.principal, row.period_start)),
        ):
            sums = totals.setdefault(key, [0, 0])
            sums[0] -= row.reserved_input
            sums[1] -= row.reserved_output
    return [(_BUMP_BUCKET, buckets), (_BUMP_PERIOD, periods)]


def _when(occurred_at: datetime, now: datetime) -> datetime:
    """When usage happened, as far as the windows go: its own time (UTC when it names no
    zone), but never in the future, so a fast clock elsewhere cannot book ahead."""
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return min(occurred_at, now)
