"""Admission: deciding a batch of one principal's requests, in two round trips.

The first reads, in one statement (one snapshot), the principal's row with its
``admissions`` count (how many batches of its requests were decided so far), the earlier
decisions of the batch's requests and the counters. The decisions are made here
(:mod:`tollgate_meter.decisions`). The second statement writes them — the reservation rows and
both counters — only if ``admissions`` is still what was read, and counts the batch in it: a
compare-and-set on the principal's row. Each runs on its own (autocommit); no transaction
holds the principal's row while the process decides.

Two admissions of one principal can then never both pass a limit: whichever writes second
finds ``admissions`` moved on, writes nothing, and reads and decides again. In one process
they never race (:mod:`tollgate_meter.batching` runs one batch per principal at a time); across
replicas they race only while a rebalance moves the principal's partition, and a batch that
loses the race :data:`OPTIMISTIC_TRIES` times is decided once more holding the row's lock in a
transaction, so that it cannot lose again. Settlement and the sweeper change only the
counters, never ``admissions``: as before, a settlement landing between the read and the
write changes what the next batch reads, not what this one may reserve.
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

#: compare-and-set attempts before a batch is decided holding the principal's row lock
OPTIMISTIC_TRIES = 2

# The principal's row (or none yet: admissions 0), the earlier decisions of the batch's
# requests and the counters — one statement, so all of them as of one moment.
_STATE = text("""
SELECT p.tier, p.windows, coalesce(p.admissions, 0) AS admissions,
  (SELECT json_object_agg(r.request_id,
       json_build_object('tier', r.tier, 'rejection', r.rejection))
     FROM meter.reservations r WHERE r.request_id = ANY(CAST(:r AS text[]))) AS previous,
  (SELECT json_agg(json_build_object(
       'bucket_start', b.bucket_start, 'input_tokens', b.input_tokens,
       'output_tokens', b.output_tokens, 'reserved_input', b.reserved_input,
       'reserved_output', b.reserved_output, 'requests', b.requests))
     FROM meter.buckets b WHERE b.principal = :p AND b.bucket_start >= :oldest) AS buckets,
  (SELECT json_build_object(
       'input_tokens', m.input_tokens, 'output_tokens', m.output_tokens,
       'reserved_input', m.reserved_input, 'reserved_output', m.reserved_output,
       'requests', m.requests)
     FROM meter.periods m WHERE m.principal = :p AND m.period_start = :m) AS period
FROM (VALUES (1)) AS one(x) LEFT JOIN meter.principals p ON p.principal = :p
""")

# The principal's row lock, for a batch that lost the compare-and-set too often; the row is
# created if need be. The state is then read by a statement of its own: under READ COMMITTED
# a statement that waited for a lock still reads with the snapshot it started with.
_LOCK = text(
    "INSERT INTO meter.principals AS p (principal) VALUES (:p)"
    " ON CONFLICT (principal) DO UPDATE SET principal = EXCLUDED.principal"
)

# A batch's decisions, written in one statement if the principal's ``admissions`` is still
# what the decisions were made on (``seen``), counting the batch in it. Rows are always
# changed in one order — the principal, the bucket, the month, then reservation rows — as
# settlement and the sweeper do (they skip the principal), so two statements never wait for
# each other's rows in a cycle (a deadlock, which Postgres breaks only after
# deadlock_timeout). Each insert reads the one before it, which makes Postgres run them in
# that order, and writes nothing when the compare-and-set wrote nothing.
_VERSION = """
WITH v AS (
  INSERT INTO meter.principals AS p (principal, admissions) VALUES (:p, 1)
  ON CONFLICT (principal) DO UPDATE SET admissions = p.admissions + 1
  WHERE p.admissions = :seen
  RETURNING 1 AS done)
"""
_ROWS = """
INSERT INTO meter.reservations (request_id, principal, model, reserved_input,
  reserved_output, status, created_at, bucket_start, period_start, tier, rejection)
SELECT x.r, :p, x.m, x.ri, x.ro, x.st, :now, :b, :per, x.t, CAST(x.rej AS jsonb)
FROM unnest(CAST(:ids AS text[]), CAST(:models AS text[]), CAST(:ris AS integer[]),
  CAST(:ros AS integer[]), CAST(:sts AS text[]), CAST(:tiers AS text[]),
  CAST(:rejs AS text[])) AS x(r, m, ri, ro, st, t, rej)
"""
_RECORD = text("".join((_VERSION, _ROWS, "WHERE EXISTS (SELECT 1 FROM v)")))
_COUNTERS = """,
bucket AS (
  INSERT INTO meter.buckets AS b (principal, bucket_start, reserved_input, reserved_output,
    requests) SELECT :p, :b, :sum_ri, :sum_ro, :n FROM v
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
_RESERVE = text("".join((_VERSION, _COUNTERS, _ROWS, "WHERE EXISTS (SELECT 1 FROM period)")))


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
        """Decide several requests of one principal together, in order: each is checked
        against the counters plus what the ones before it in the batch reserved. One read and
        one conditional write for the whole batch (read and decided again if another
        admission of the principal wrote in between), so a principal's concurrent requests
        never queue behind a transaction each."""

        async def optimistic(conn: AsyncConnection) -> list[Decision] | None:
            return await self._decide(conn, principal, requests, now)

        for _ in range(OPTIMISTIC_TRIES):
            # autocommit: each statement commits alone; run again after a dead connection,
            # the read finds whatever the write committed
            decisions = await self._run(optimistic, single=True)
            if decisions is not None:
                return decisions

        async def locked(conn: AsyncConnection) -> list[Decision]:
            await conn.execute(_LOCK, {"p": principal})
            decisions = await self._decide(conn, principal, requests, now)
            if decisions is None:  # nobody else can count an admission while the lock is held
                raise RuntimeError(f"admission of {principal!r}: the version moved under a lock")
            return decisions

        return await self._run(locked)

    async def _decide(
        self,
        conn: AsyncConnection,
        principal: str,
        requests: Sequence[AdmissionRequest],
        now: datetime,
    ) -> list[Decision] | None:
        """Read, decide and write the batch's decisions; None if another admission of the
        principal was counted after the read (nothing written)."""
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
            written = await conn.execute(
                _RESERVE if batch.admitted else _RECORD,
                _parameters(batch, principal, month_start(now), state.admissions),
            )
            if written.rowcount == 0:
                return None
        return decisions

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
        """The principal's row, the batch's earlier decisions and the counters since
        ``oldest`` (as far back as every tier's windows reach)."""
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


def _parameters(batch: Batch, principal: str, period: date, seen: int) -> dict[str, Any]:
    """The batch as the parameters of the statement that writes it, if the principal's
    ``admissions`` is still ``seen``."""
    columns = list(zip(*batch.rows, strict=True))
    return {
        "p": principal,
        "seen": seen,
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
