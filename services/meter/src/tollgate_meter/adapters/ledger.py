"""The meter's Postgres ledger: reservations, time buckets and monthly periods.

Admission runs in one transaction that first locks the principal's row
(``SELECT … FOR UPDATE`` in ``meter.admission_state()``, which then reads the counters with a
fresh snapshot), so concurrent admissions for one principal — in this process or any other
replica — are decided one after the other against committed sums: no check-then-write race
and no per-process counters. An admission is four round trips: BEGIN, that function, one
statement writing the reservation (or the refusal) and both counters, COMMIT. Settlement
and release change the counters with single atomic ``UPDATE … SET x = x + …`` statements.

The engine does not ping connections before use (a round trip per admission). A pooled
connection that died — Postgres restarted — fails on its first statement; SQLAlchemy then
discards the pool's older connections and the ledger runs the operation once more on a fresh
one (:meth:`PostgresLedger._run`). That is safe because every write here is idempotent by
request id: an admission whose commit did land is found as the earlier decision, a settlement
as already settled. While Postgres stays down the second attempt fails too, and the caller
gets :class:`DependencyUnavailable`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollgate_core import db
from tollgate_core.contracts import UsageRecordV1
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_core.settings import DatabaseSettings
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import (
    Bucket,
    TierConfig,
    TierSpec,
    Totals,
    Violation,
    WindowSpec,
    WindowUsage,
    bucket_start,
    check,
    month_start,
    oldest_bucket_needed,
    window_usage,
)

T = TypeVar("T")

#: a calendar-month window (and the month's by-model report) reaches back at most this far
LONGEST_MONTH = timedelta(days=31)


def create_engine(settings: DatabaseSettings, *, application_name: str = "meter") -> AsyncEngine:
    """The meter's engine: no ping on checkout; the ledger retries a dead connection once."""
    return db.create_engine(settings, application_name=application_name, pre_ping=False)


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    principal: str
    status: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    tier: str
    violation: Violation | None = None
    #: the request was decided before (a redelivery); nothing was reserved again
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class UsageReport:
    principal: str
    tier: str
    windows: list[WindowUsage]
    by_model: list[dict[str, Any]]


class Ledger(Protocol):
    async def admit(
        self,
        request_id: str,
        principal: str,
        model: str | None,
        groups: Sequence[str],
        estimate: Estimate,
        now: datetime,
    ) -> Decision: ...

    async def admit_many(
        self, principal: str, requests: Sequence[AdmissionRequest], now: datetime
    ) -> list[Decision]: ...

    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool: ...

    async def release_expired(self, cutoff: datetime, limit: int = 500) -> int: ...

    async def prune(self, now: datetime) -> int: ...

    async def prune_reservations(
        self, now: datetime, margin: timedelta, limit: int = 1000
    ) -> int: ...

    async def report(self, principal: str, groups: Sequence[str], now: datetime) -> UsageReport: ...

    async def get(self, request_id: str) -> Reservation | None: ...


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Postgres trouble becomes :class:`DependencyUnavailable` (retriable) at this edge; a
    value Postgres cannot take (a number out of its column's range, a NUL in a text) is the
    caller's bad input, :class:`RequestError`, never an outage."""
    try:
        yield
    except (IntegrityError, ProgrammingError):
        raise  # a bug, not an outage
    except DBAPIError as exc:
        if isinstance(exc, DataError) or _is_bad_value(exc):
            raise RequestError(f"a value cannot be stored: {_first_line(exc)}") from exc
        raise DependencyUnavailable(f"Postgres unavailable: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise DependencyUnavailable(f"Postgres unavailable: {exc}") from exc


def _is_bad_value(exc: DBAPIError) -> bool:
    """SQLSTATE class 22 (data exception) from the server, or a parameter the driver could
    not encode (asyncpg raises a ``ValueError`` subclass before sending anything)."""
    seen: BaseException | None = exc.orig
    while seen is not None:
        if str(getattr(seen, "sqlstate", None) or "").startswith("22"):
            return True
        if isinstance(seen, ValueError):
            return True
        seen = seen.__cause__
    return False


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__


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
_SETTLE = text("SELECT meter.settle_usage(:r, :p, :m, :i, :o, :c, :now, :b, :per)")
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


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """One request of a principal to decide."""

    request_id: str
    model: str | None
    groups: tuple[str, ...]
    estimate: Estimate
    #: the tier the auth policy names for the caller (one more candidate beside its groups')
    tier: str | None = None


class _Counters:
    """A JSON counters object read like a result row."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.input_tokens = data["input_tokens"]
        self.output_tokens = data["output_tokens"]
        self.reserved_input = data["reserved_input"]
        self.reserved_output = data["reserved_output"]
        self.requests = data["requests"]


class PostgresLedger:
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

    # --- admission -----------------------------------------------------------------------

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
            oldest = oldest_bucket_needed(
                [w for t in {**self._config.tiers, **overrides}.values() for w in t.windows],
                now,
                self._bucket_seconds,
            )
            ids = [r.request_id for r in requests]
            state = (
                await conn.execute(
                    _STATE, {"p": principal, "r": ids, "oldest": oldest, "m": month_start(now)}
                )
            ).one()
            limits = [self._resolve(state, r.groups, overrides, r.tier) for r in requests]
            needed = oldest_bucket_needed(
                [w for _, windows in limits for w in windows], now, self._bucket_seconds
            )
            if needed < oldest:  # unusually long windows of the principal's own
                buckets, month = await self._counters(conn, principal, needed, now)
            else:
                buckets = [
                    _bucket(datetime.fromisoformat(b["bucket_start"]), _Counters(b))
                    for b in state.buckets or ()
                ]
                month = None if state.period is None else _bucket(now, _Counters(state.period))
            batch = _Batch(now, bucket_start(now, self._bucket_seconds), buckets, month)
            previous: dict[str, Any] = dict(state.previous or {})
            decisions = [
                self._decide(batch, previous, request, limit)
                for request, limit in zip(requests, limits, strict=True)
            ]
            if batch.rows:
                await conn.execute(
                    _RESERVE if batch.admitted else _RECORD,
                    batch.parameters(principal, month_start(now)),
                )
            return decisions

        return await self._run(admit)

    def _decide(
        self,
        batch: _Batch,
        previous: dict[str, Any],
        request: AdmissionRequest,
        limit: tuple[str, Sequence[WindowSpec]],
    ) -> Decision:
        """One request of a batch: the decision already written for its id (a redelivery),
        else checked against the counters plus what the batch reserved before it."""
        earlier = previous.get(request.request_id)
        if earlier is not None:
            violation = _violation(earlier.get("rejection"))
            return Decision(violation is None, earlier.get("tier") or "", violation, True)
        tier, windows = limit
        now = batch.now
        usages = [
            window_usage(w, batch.buckets, batch.month, now, self._bucket_seconds) for w in windows
        ]
        requested = Totals(request.estimate.input_tokens, request.estimate.output_tokens, 1)
        violation = check(usages, requested, now)
        batch.add(request, tier, violation)
        previous[request.request_id] = {
            "tier": tier,
            "rejection": violation.details() if violation else None,
        }
        return Decision(violation is None, tier, violation)

    async def _run(
        self,
        body: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool = True,
        single: bool = False,
    ) -> T:
        """``body`` through :func:`tollgate_core.db.run` (once more on a fresh connection
        after a dead pooled one); Postgres trouble becomes :class:`DependencyUnavailable`."""
        async with _translated():
            return await db.run(self._engine, body, write=write, single=single)

    def _resolve(
        self,
        owner: Any,
        groups: Sequence[str],
        overrides: dict[str, TierSpec],
        policy_tier: str | None = None,
    ) -> tuple[str, tuple[WindowSpec, ...]]:
        name, tier = self._config.tier_for(groups, overrides, owner.tier, policy_tier)
        if owner.windows is not None:
            return name, tuple(WindowSpec.model_validate(w) for w in owner.windows)
        return name, tier.windows

    async def _limits(
        self, conn: AsyncConnection, owner: Any, groups: Sequence[str]
    ) -> tuple[str, tuple[WindowSpec, ...]]:
        return self._resolve(owner, groups, await self._tier_overrides(conn))

    async def _tier_overrides(self, conn: AsyncConnection) -> dict[str, TierSpec]:
        loaded_at, tiers = self._tiers
        if time.monotonic() - loaded_at > self._tier_cache_s:
            rows = (await conn.execute(text("SELECT name, spec FROM meter.tiers"))).all()
            tiers = {r.name: TierSpec.model_validate(r.spec) for r in rows}
            self._tiers = (time.monotonic(), tiers)
        return tiers

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
        return [_bucket(r.bucket_start, r) for r in rows], None if row is None else _bucket(
            now, row
        )

    async def _usages(
        self, conn: AsyncConnection, principal: str, windows: Sequence[WindowSpec], now: datetime
    ) -> list[WindowUsage]:
        oldest = oldest_bucket_needed(windows, now, self._bucket_seconds)
        buckets, month = await self._counters(conn, principal, oldest, now)
        return [window_usage(w, buckets, month, now, self._bucket_seconds) for w in windows]

    # --- settlement ----------------------------------------------------------------------

    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        """Replace the request's reservation by its usage, once (False: already settled).
        Usage of a request this ledger never admitted (admitted while it failed open, say)
        is recorded too, so the ledger still equals the usage stream: in the bucket and month
        it happened in, never later than now. One statement: ``meter.settle_usage()``."""
        at = _when(usage.occurred_at, now)
        params = {
            "r": usage.request_id,
            "p": usage.principal,
            "m": usage.model,
            "i": usage.usage.input_tokens,
            "o": usage.usage.output_tokens,
            "c": usage.cost_usd,
            "now": now,
            "b": bucket_start(at, self._bucket_seconds),
            "per": month_start(at),
        }

        async def settle(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(_SETTLE, params)).scalar_one())

        return await self._run(settle, single=True)

    async def release_expired(self, cutoff: datetime, limit: int = 500) -> int:
        """Give back the reservations of requests that never settled (their router died and
        the request was never redelivered, say)."""

        async def release(conn: AsyncConnection) -> int:
            rows = (
                await conn.execute(
                    text(
                        "SELECT request_id, principal, bucket_start, period_start, reserved_input,"
                        " reserved_output FROM meter.reservations"
                        " WHERE status = 'reserved' AND created_at < :cutoff"
                        " ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED"
                    ),
                    {"cutoff": cutoff, "limit": limit},
                )
            ).all()
            # every bucket, then every month, each in key order: the order admission and
            # settlement take them in, so no two transactions wait for each other in a cycle
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
            for statement, totals in ((_BUMP_BUCKET, buckets), (_BUMP_PERIOD, periods)):
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
                await conn.execute(
                    text(
                        "UPDATE meter.reservations SET status = 'released', released_at = now()"
                        " WHERE request_id = ANY(CAST(:ids AS text[]))"
                    ),
                    {"ids": [row.request_id for row in rows]},
                )
            return len(rows)

        return await self._run(release)

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

    async def prune(self, now: datetime) -> int:
        """Delete buckets no window can reach any more (and month periods over a year old)."""

        async def prune(conn: AsyncConnection) -> int:
            oldest = oldest_bucket_needed(await self._all_windows(conn), now, self._bucket_seconds)
            deleted = await conn.execute(
                text(
                    "DELETE FROM meter.buckets WHERE bucket_start < :oldest AND"
                    " reserved_input = 0 AND reserved_output = 0"
                ),
                {"oldest": oldest},
            )
            await conn.execute(
                text("DELETE FROM meter.periods WHERE period_start < :year_ago"),
                {"year_ago": date(now.year - 1, now.month, 1)},
            )
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
            deleted = await conn.execute(
                text(
                    "DELETE FROM meter.reservations WHERE request_id IN ("
                    " SELECT request_id FROM meter.reservations"
                    " WHERE status <> 'reserved' AND created_at < :cutoff"
                    " AND (settled_at IS NULL OR settled_at < :cutoff)"
                    " ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
                ),
                {"cutoff": cutoff, "limit": limit},
            )
            return int(deleted.rowcount)

        return await self._run(prune)

    # --- reading -------------------------------------------------------------------------

    async def report(self, principal: str, groups: Sequence[str], now: datetime) -> UsageReport:
        async def report(conn: AsyncConnection) -> UsageReport:
            owner = (
                await conn.execute(
                    text("SELECT tier, windows FROM meter.principals WHERE principal = :p"),
                    {"p": principal},
                )
            ).first()
            tier, windows = await self._limits(conn, owner or _NoOwner(), groups)
            usages = await self._usages(conn, principal, windows, now)
            rows = (
                await conn.execute(
                    text(
                        "SELECT coalesce(model, '') AS model, count(*) AS requests,"
                        " coalesce(sum(input_tokens), 0) AS input_tokens,"
                        " coalesce(sum(output_tokens), 0) AS output_tokens,"
                        " coalesce(sum(cost_usd), 0) AS cost_usd FROM meter.reservations"
                        " WHERE principal = :p AND status = 'settled' AND period_start = :m"
                        " GROUP BY 1 ORDER BY 1"
                    ),
                    {"p": principal, "m": month_start(now)},
                )
            ).all()
            by_model = [
                {
                    "model": r.model,
                    "requests": r.requests,
                    "input_tokens": int(r.input_tokens),
                    "output_tokens": int(r.output_tokens),
                    "cost_usd": str(Decimal(r.cost_usd)),
                }
                for r in rows
            ]
            return UsageReport(principal, tier, usages, by_model)

        return await self._run(report, write=False)

    async def overview(self, now: datetime, top: int = 20) -> dict[str, Any]:
        """Settled usage of every principal today (UTC) and this month, and the month's
        models by tokens: the admin view."""
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

        async def overview(conn: AsyncConnection) -> dict[str, Any]:
            params = {"m": month_start(now), "day": day, "top": top}
            principals = (await conn.execute(text(_PRINCIPALS_SQL), params)).all()
            models = (await conn.execute(text(_MODELS_SQL), params)).all()
            return {
                "day": day.date().isoformat(),
                "month": month_start(now).isoformat(),
                "principals": [_principal_row(r) for r in principals],
                "models": [_model_row(r) for r in models],
            }

        return await self._run(overview, write=False)

    async def get(self, request_id: str) -> Reservation | None:
        async def get(conn: AsyncConnection) -> Reservation | None:
            row = (
                await conn.execute(
                    text(
                        "SELECT request_id, principal, status, input_tokens, output_tokens"
                        " FROM meter.reservations WHERE request_id = :r"
                    ),
                    {"r": request_id},
                )
            ).first()
            return None if row is None else Reservation(*row)

        return await self._run(get, write=False)

    # --- administration ------------------------------------------------------------------

    async def tiers(self) -> dict[str, TierSpec]:
        async def tiers(conn: AsyncConnection) -> dict[str, TierSpec]:
            self._tiers = (0.0, {})
            return {**self._config.tiers, **await self._tier_overrides(conn)}

        return await self._run(tiers, write=False)

    async def set_tier(self, name: str, spec: TierSpec) -> None:
        async def set_tier(conn: AsyncConnection) -> None:
            await conn.execute(
                text(
                    "INSERT INTO meter.tiers (name, spec) VALUES (:n, CAST(:s AS jsonb))"
                    " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now()"
                ),
                {"n": name, "s": spec.model_dump_json()},
            )

        await self._run(set_tier)
        self._tiers = (0.0, {})

    async def delete_tier(self, name: str) -> bool:
        async def delete_tier(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                text("DELETE FROM meter.tiers WHERE name = :n"), {"n": name}
            )
            return bool(result.rowcount)

        # run twice after a lost commit, it answers False for a tier it did delete: rare, and
        # the tier is gone either way
        deleted = await self._run(delete_tier)
        self._tiers = (0.0, {})
        return deleted

    async def set_principal(
        self, principal: str, tier: str | None, windows: Sequence[WindowSpec] | None
    ) -> None:
        payload = (
            None
            if windows is None
            else json.dumps([w.model_dump(exclude_none=True) for w in windows])
        )

        async def set_principal(conn: AsyncConnection) -> None:
            await conn.execute(
                text(
                    "INSERT INTO meter.principals (principal, tier, windows)"
                    " VALUES (:p, :t, CAST(:w AS jsonb)) ON CONFLICT (principal) DO UPDATE"
                    " SET tier = EXCLUDED.tier, windows = EXCLUDED.windows, updated_at = now()"
                ),
                {"p": principal, "t": tier, "w": payload},
            )

        await self._run(set_principal)

    async def principal_limits(self, principal: str) -> dict[str, Any] | None:
        async def limits(conn: AsyncConnection) -> dict[str, Any] | None:
            row = (
                await conn.execute(
                    text("SELECT tier, windows FROM meter.principals WHERE principal = :p"),
                    {"p": principal},
                )
            ).first()
            return None if row is None else {"tier": row.tier, "windows": row.windows}

        return await self._run(limits, write=False)


class _Batch:
    """The decisions of one admission batch: the rows to write, and what the requests
    admitted so far in it reserved, which the counters as read (``buckets``, ``month``) show
    to the requests after them."""

    def __init__(
        self, now: datetime, bucket: datetime, buckets: list[Bucket], month: Bucket | None
    ) -> None:
        self.now = now
        self.bucket = bucket
        self._buckets = buckets
        self._month = month
        self.rows: list[tuple[str, str | None, int, int, str, str, str | None]] = []
        self.reserved = Totals()

    @property
    def admitted(self) -> int:
        return self.reserved.requests

    @property
    def buckets(self) -> list[Bucket]:
        if not self.admitted:
            return self._buckets
        return [*self._buckets, Bucket(self.bucket, Totals(), self.reserved)]

    @property
    def month(self) -> Bucket | None:
        if not self.admitted:
            return self._month
        used, reserved = Totals(), Totals()
        if self._month is not None:
            used.add(self._month.used)
            reserved.add(self._month.reserved)
        reserved.add(self.reserved)
        return Bucket(self.now, used, reserved)

    def add(self, request: AdmissionRequest, tier: str, violation: Violation | None) -> None:
        est = request.estimate
        rejection = json.dumps(violation.details()) if violation else None
        status = "rejected" if violation else "reserved"
        self.rows.append(
            (request.request_id, request.model, est.input_tokens, est.output_tokens, status,
             tier, rejection)
        )  # fmt: skip
        if violation is None:
            self.reserved.add(Totals(est.input_tokens, est.output_tokens, 1))

    def parameters(self, principal: str, period: date) -> dict[str, Any]:
        columns = list(zip(*self.rows, strict=True))
        return {
            "p": principal,
            "now": self.now,
            "b": self.bucket,
            "per": period,
            "sum_ri": self.reserved.input,
            "sum_ro": self.reserved.output,
            "n": self.reserved.requests,
            **dict(
                zip(
                    ("ids", "models", "ris", "ros", "sts", "tiers", "rejs"),
                    map(list, columns),
                    strict=True,
                )
            ),
        }


class _NoOwner:
    tier = None
    windows = None


def _bucket(start: datetime, row: Any) -> Bucket:
    return Bucket(
        start=start,
        used=Totals(int(row.input_tokens), int(row.output_tokens), int(row.requests)),
        reserved=Totals(int(row.reserved_input), int(row.reserved_output), 0),
    )


def _when(occurred_at: datetime, now: datetime) -> datetime:
    """When usage happened, as far as the windows go: its own time (UTC when it names no
    zone), but never in the future, so a fast clock elsewhere cannot book ahead."""
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return min(occurred_at, now)


def _violation(raw: Any) -> Violation | None:
    if not raw:
        return None
    data = raw if isinstance(raw, dict) else json.loads(raw)
    return Violation(
        window=data["window"],
        dimension=data["limit_type"],
        limit=data["limit"],
        used=data["used"],
        requested=data["requested"],
        retry_after_s=data["retry_after_s"],
    )


_PRINCIPALS_SQL = (
    "SELECT principal,"
    " count(*) FILTER (WHERE bucket_start >= :day) AS day_requests,"
    " coalesce(sum(input_tokens) FILTER (WHERE bucket_start >= :day), 0) AS day_input,"
    " coalesce(sum(output_tokens) FILTER (WHERE bucket_start >= :day), 0) AS day_output,"
    " coalesce(sum(cost_usd) FILTER (WHERE bucket_start >= :day), 0) AS day_cost,"
    " count(*) AS month_requests,"
    " coalesce(sum(input_tokens), 0) AS month_input,"
    " coalesce(sum(output_tokens), 0) AS month_output,"
    " coalesce(sum(cost_usd), 0) AS month_cost"
    " FROM meter.reservations WHERE status = 'settled' AND period_start = :m"
    " GROUP BY principal"
    " ORDER BY coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) DESC, principal"
    " LIMIT :top"
)
_MODELS_SQL = (
    "SELECT coalesce(model, '') AS model, count(*) AS requests,"
    " coalesce(sum(input_tokens), 0) AS input_tokens,"
    " coalesce(sum(output_tokens), 0) AS output_tokens,"
    " coalesce(sum(cost_usd), 0) AS cost_usd"
    " FROM meter.reservations WHERE status = 'settled' AND period_start = :m"
    " GROUP BY 1 ORDER BY 3 + 4 DESC, 1 LIMIT :top"
)


def _period(requests: int, input_tokens: int, output_tokens: int, cost: Any) -> dict[str, Any]:
    return {
        "requests": int(requests),
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "total_tokens": int(input_tokens) + int(output_tokens),
        "cost_usd": str(Decimal(cost)),
    }


def _principal_row(r: Any) -> dict[str, Any]:
    return {
        "principal": r.principal,
        "today": _period(r.day_requests, r.day_input, r.day_output, r.day_cost),
        "month": _period(r.month_requests, r.month_input, r.month_output, r.month_cost),
    }


def _model_row(r: Any) -> dict[str, Any]:
    return {"model": r.model, **_period(r.requests, r.input_tokens, r.output_tokens, r.cost_usd)}
