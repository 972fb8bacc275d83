"""A ledger in dictionaries, for tests of what sits on a ledger (the handlers, the batcher).

It keeps the promises of :class:`tollgate_meter.ports.Admissions`, ``Settlements`` and
``Reports.report``/``get`` with the decisions the Postgres ledger makes
(:class:`tollgate_meter.decisions.Batch`), one lock standing in for the compare-and-set on the
principal's row. What only Postgres can show — many connections, many meters, an outage —
stays with the tests of :class:`~tollgate_meter.adapters.postgres.PostgresLedger`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from tollgate_core.contracts import UsageRecordV1
from tollgate_meter.decisions import Batch
from tollgate_meter.limits import (
    Bucket,
    TierConfig,
    Totals,
    WindowSpec,
    bucket_start,
    month_start,
    window_usage,
)
from tollgate_meter.ports import AdmissionRequest, Decision, Reservation, UsageReport


@dataclass
class _Counters:
    """One bucket's or month's counters: ``used`` counts requests too, as the tables do."""

    used: Totals = field(default_factory=Totals)
    reserved: Totals = field(default_factory=Totals)


@dataclass
class _Row:
    principal: str
    model: str | None
    status: str
    tier: str
    rejection: str | None
    reserved: Totals
    bucket: datetime
    period: date
    usage: Totals = field(default_factory=Totals)
    cost_usd: Decimal = Decimal(0)


class MemoryLedger:
    def __init__(self, config: TierConfig, *, bucket_seconds: int) -> None:
        self._config = config
        self._bucket_seconds = bucket_seconds
        self._buckets: dict[tuple[str, datetime], _Counters] = {}
        self._months: dict[tuple[str, date], _Counters] = {}
        self._rows: dict[str, _Row] = {}
        self._lock = asyncio.Lock()

    def _limits(
        self, groups: Sequence[str], tier: str | None
    ) -> tuple[str, tuple[WindowSpec, ...]]:
        name, spec = self._config.tier_for(groups, {}, None, tier)
        return name, spec.windows

    def _read(self, principal: str, now: datetime) -> tuple[list[Bucket], Bucket | None]:
        buckets = [
            Bucket(start, c.used.plus(Totals()), c.reserved.plus(Totals()))
            for (owner, start), c in self._buckets.items()
            if owner == principal
        ]
        month = self._months.get((principal, month_start(now)))
        return buckets, None if month is None else Bucket(now, month.used, month.reserved)

    def _count(
        self, principal: str, at: tuple[datetime, date], used: Totals, reserved: Totals
    ) -> None:
        for counters in (
            self._buckets.setdefault((principal, at[0]), _Counters()),
            self._months.setdefault((principal, at[1]), _Counters()),
        ):
            counters.used.add(used)
            counters.reserved.add(reserved)

    async def admit_many(
        self, principal: str, requests: Sequence[AdmissionRequest], now: datetime
    ) -> list[Decision]:
        async with self._lock:
            previous = {
                r.request_id: {"tier": row.tier, "rejection": row.rejection}
                for r in requests
                if (row := self._rows.get(r.request_id)) is not None
            }
            batch = Batch(now, self._bucket_seconds, self._read(principal, now), previous)
            decisions = [batch.decide(r, self._limits(r.groups, r.tier)) for r in requests]
            at = (batch.bucket, month_start(now))
            for request_id, model, ri, ro, status, tier, rejection in batch.rows:
                self._rows[request_id] = _Row(
                    principal, model, status, tier, rejection, Totals(ri, ro), *at
                )
            self._count(principal, at, Totals(requests=batch.admitted), batch.reserved)
            return decisions

    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        async with self._lock:
            row = self._rows.get(usage.request_id)
            if row is not None and row.status == "settled":
                return False
            occurred = usage.occurred_at
            occurred = min(occurred if occurred.tzinfo else occurred.replace(tzinfo=UTC), now)
            requests = 0
            if row is None:  # usage of a request never admitted here: recorded all the same
                start = bucket_start(occurred, self._bucket_seconds)
                row = _Row(usage.principal, usage.model, "reserved", "", None, Totals(),
                           start, month_start(occurred))  # fmt: skip
                self._rows[usage.request_id] = row
                requests = 1
            given_back = row.reserved if row.status == "reserved" else Totals()
            spent = Totals(usage.usage.input_tokens, usage.usage.output_tokens, requests)
            self._count(
                row.principal,
                (row.bucket, row.period),
                spent,
                Totals(-given_back.input, -given_back.output),
            )
            row.status, row.usage = "settled", spent
            row.cost_usd = usage.cost_usd
            row.model = row.model or usage.model
            return True

    async def settle_many(self, usages: Sequence[UsageRecordV1], now: datetime) -> list[bool]:
        return [await self.settle(usage, now) for usage in usages]

    async def report(self, principal: str, groups: Sequence[str], now: datetime) -> UsageReport:
        tier, windows = self._limits(groups, None)
        buckets, month = self._read(principal, now)
        usages = [window_usage(w, buckets, month, now, self._bucket_seconds) for w in windows]
        by_model: dict[str, tuple[int, int, int, Decimal]] = {}
        for row in self._rows.values():
            if row.principal == principal and row.status == "settled":
                n, i, o, c = by_model.get(row.model or "", (0, 0, 0, Decimal(0)))
                by_model[row.model or ""] = (
                    n + 1, i + row.usage.input, o + row.usage.output, c + row.cost_usd
                )  # fmt: skip
        models = [
            {"model": m, "requests": n, "input_tokens": i, "output_tokens": o, "cost_usd": str(c)}
            for m, (n, i, o, c) in sorted(by_model.items())
        ]
        return UsageReport(principal, tier, usages, models)

    async def get(self, request_id: str) -> Reservation | None:
        row = self._rows.get(request_id)
        if row is None:
            return None
        settled = row.status == "settled"
        return Reservation(
            request_id,
            row.principal,
            row.status,
            row.usage.input if settled else None,
            row.usage.output if settled else None,
        )
