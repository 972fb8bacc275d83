"""Admission: deciding a batch of one principal's requests in one transaction.

The transaction first locks the principal's row (``SELECT … FOR UPDATE`` in
``meter.admission_state_many()``, which then reads the counters with a fresh snapshot), so
concurrent admissions for one principal — in this process or any other replica — are decided
one after the other against committed sums: no check-then-write race and no per-process
counters. A batch is four round trips: BEGIN, that function, one statement writing the
decisions and both counters, COMMIT. The decisions themselves are :mod:`tollgate_meter.decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate_meter.adapters.postgres.store import Limits, Store, bucket
from tollgate_meter.decisions import Batch
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import Bucket, TierSpec, month_start, oldest_bucket_needed
from tollgate_meter.ports import AdmissionRequest, Decision

# The principal's row lock, then the earlier decisions of the batch's requests and the
# counters, read with a fresh snapshot (two statements in one function: see migration 0005).
_STATE = text("SELECT * FROM meter.admission_state_many(:p, CAST(:r AS text[]), :oldest, :m)")

# A batch's decisions, written in one statement. Counters are always changed in one order —
# the bucket, then the month, then reservation rows — as settlement and the sweeper do, so
# two transactions never wait for each other's rows in a cycle (a deadlock, which Postgres
# breaks only after deadlock_timeout). The period insert reads the bucket insert's output
# and the reservation insert tests the period's, which makes Postgres run them in that order.
_ROWS = """
INSERT INTO meter.reservations (request_id, principal, model, reserved_input,
  reserved_output, status, created_at, bucket_start, period_start, tier, rejection)
SELECT x.r, :p, x.m, x.ri, x.ro, x.st, :now, :b, :per, x.t, CAST(x.rej AS jsonb)
FROM unnest(CAST(:ids AS text[]), CAST(:models AS text[]), CAST(:ris AS integer[]),
  CAST(:ros AS integer[]), CAST(:sts AS text[]), CAST(:tiers AS text[]),
  CAST(:rejs AS text[])) AS x(r, m, ri, ro, st, t, rej)
"""
_RECORD = text(_ROWS)
_COUNTERS = """
WITH bucket AS (
  INSERT INTO meter.buckets AS b (principal, bucket_start, reserved_input, reserved_output,
    requests) VALUES (:p, :b, :sum_ri, :sum_ro, :n)
  ON CONFLICT (principal, bucket_start) DO UPDATE SET
    reserved_input = b.reserved_input + EXCLUDED.reserved_input,
    reserved_output = b.reserved_output + EXCLUDED.reserved_output,
    requests = b.requests + EXCLUDED.requests
  RETURNING 1 AS done),
period AS (
  INSERT INTO meter.periods AS m (principal, period_start, reserved_input, reserved_output,
    requests) SELECT :p, :per, :sum_ri, :sum_ro, :n FROM bucket
  ON CONFLICT (principal, period_start) DO UPDATE SET
    reserved_input = m.reserved_input + EXCLUDED.reserved_input,
    reserved_output = m.reserved_output + EXCLUDED.reserved_output,
    requests = m.requests + EXCLUDED.requests
  RETURNING 1 AS done)
"""
_RESERVE = text("".join((_COUNTERS, _ROWS, "WHERE EXISTS (SELECT 1 FROM period)")))


class AdmissionSql(Store):
    async def admit(
        self,
        request_id: str,
        principal: str,
        model: str | None,
        groups: Sequence[str],
        estimate: Estimate,
        now: datetime,
    ) -> Decision:
        request = AdmissionRequest(request_id, model, tuple(groups), estimate)
        return (await self.admit_many(principal, [request], now))[0]

    async def admit_many(
        self, principal: str, requests: Sequence[AdmissionRequest], now: datetime
    ) -> list[Decision]:
        """Decide several requests of one principal in one transaction, in order: each is
        checked against the counters plus what the ones before it in the batch reserved.
        One lock, one read and one write for the whole batch, so a principal's concurrent
        requests share a transaction instead of queueing for one each."""

        async def admit(conn: AsyncConnection) -> list[Decision]:
            overrides = await self._tier_overrides(conn)
            oldest = self._oldest(overrides, now)
            state = await self._state(conn, principal, requests, oldest, now)
            limits = [self._resolve(state, r.groups, overrides, r.tier) for r in requests]
            batch = Batch(
                now,
                self._bucket_seconds,
                await self._batch_counters(conn, principal, state, limits, oldest, now),
                state.previous or {},
            )
            decisions = [batch.decide(r, limit) for r, limit in zip(requests, limits, strict=True)]
            if batch.rows:
                await conn.execute(
                    _RESERVE if batch.admitted else _RECORD,
                    _parameters(batch, principal, month_start(now)),
                )
            return decisions

        return await self._run(admit)

    def _oldest(self, tiers: dict[str, TierSpec], now: datetime) -> datetime:
        windows = [w for t in {**self._config.tiers, **tiers}.values() for w in t.windows]
        return oldest_bucket_needed(windows, now, self._bucket_seconds)

    async def _state(
        self,
        conn: AsyncConnection,
        principal: str,
        requests: Sequence[AdmissionRequest],
        oldest: datetime,
        now: datetime,
    ) -> Any:
        """The principal's row (locked), the batch's earlier decisions and the counters
        since ``oldest`` (as far back as every tier's windows reach)."""
        ids = [r.request_id for r in requests]
        parameters = {"p": principal, "r": ids, "oldest": oldest, "m": month_start(now)}
        return (await conn.execute(_STATE, parameters)).one()

    async def _batch_counters(
        self,
        conn: AsyncConnection,
        principal: str,
        state: Any,
        limits: list[Limits],
        oldest: datetime,
        now: datetime,
    ) -> tuple[list[Bucket], Bucket | None]:
        """The counters as :func:`_state` read them (since ``oldest``), or read again further
        back for a principal with unusually long windows of its own."""
        needed = oldest_bucket_needed(
            [w for _, windows in limits for w in windows], now, self._bucket_seconds
        )
        if needed < oldest:
            return await self._counters(conn, principal, needed, now)
        buckets = [
            bucket(datetime.fromisoformat(b["bucket_start"]), _Counters(b))
            for b in state.buckets or ()
        ]
        return buckets, None if state.period is None else bucket(now, _Counters(state.period))


class _Counters:
    """A JSON counters object read like a result row."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.input_tokens = data["input_tokens"]
        self.output_tokens = data["output_tokens"]
        self.reserved_input = data["reserved_input"]
        self.reserved_output = data["reserved_output"]
        self.requests = data["requests"]


def _parameters(batch: Batch, principal: str, period: date) -> dict[str, Any]:
    """The batch as the parameters of the statement that writes it."""
    columns = list(zip(*batch.rows, strict=True))
    return {
        "p": principal,
        "now": batch.now,
        "b": batch.bucket,
        "per": period,
        "sum_ri": batch.reserved.input,
        "sum_ro": batch.reserved.output,
        "n": batch.reserved.requests,
        **dict(
            zip(
                ("ids", "models", "ris", "ros", "sts", "tiers", "rejs"),
                map(list, columns),
                strict=True,
            )
        ),
    }
