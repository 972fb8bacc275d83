"""Reading the ledger: a principal's usage against its limits, the admin overview, one
request's reservation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate_meter.adapters.postgres.store import Store
from tollgate_meter.limits import month_start
from tollgate_meter.ports import Reservation, UsageReport

_OWNER = text("SELECT tier, windows FROM meter.principals WHERE principal = :p")
_BY_MODEL = text(
    "SELECT coalesce(model, '') AS model, count(*) AS requests,"
    " coalesce(sum(input_tokens), 0) AS input_tokens,"
    " coalesce(sum(output_tokens), 0) AS output_tokens,"
    " coalesce(sum(cost_usd), 0) AS cost_usd FROM meter.reservations"
    " WHERE principal = :p AND status = 'settled' AND period_start = :m"
    " GROUP BY 1 ORDER BY 1"
)
_RESERVATION = text(
    "SELECT request_id, principal, status, input_tokens, output_tokens"
    " FROM meter.reservations WHERE request_id = :r"
)
_PRINCIPALS = text(
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
_MODELS = text(
    "SELECT coalesce(model, '') AS model, count(*) AS requests,"
    " coalesce(sum(input_tokens), 0) AS input_tokens,"
    " coalesce(sum(output_tokens), 0) AS output_tokens,"
    " coalesce(sum(cost_usd), 0) AS cost_usd"
    " FROM meter.reservations WHERE status = 'settled' AND period_start = :m"
    " GROUP BY 1 ORDER BY 3 + 4 DESC, 1 LIMIT :top"
)


class ReportSql(Store):
    async def report(self, principal: str, groups: Sequence[str], now: datetime) -> UsageReport:
        async def report(conn: AsyncConnection) -> UsageReport:
            owner = (await conn.execute(_OWNER, {"p": principal})).first()
            overrides = await self._tier_overrides(conn)
            tier, windows = self._resolve(owner or _NoOwner(), groups, overrides)
            usages = await self._usages(conn, principal, windows, now)
            rows = (await conn.execute(_BY_MODEL, {"p": principal, "m": month_start(now)})).all()
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
            principals = (await conn.execute(_PRINCIPALS, params)).all()
            models = (await conn.execute(_MODELS, params)).all()
            return {
                "day": day.date().isoformat(),
                "month": month_start(now).isoformat(),
                "principals": [_principal_row(r) for r in principals],
                "models": [_model_row(r) for r in models],
            }

        return await self._run(overview, write=False)

    async def get(self, request_id: str) -> Reservation | None:
        async def get(conn: AsyncConnection) -> Reservation | None:
            row = (await conn.execute(_RESERVATION, {"r": request_id})).first()
            return None if row is None else Reservation(*row)

        return await self._run(get, write=False)


class _NoOwner:
    """A principal without a ``meter.principals`` row."""

    tier = None
    windows = None


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
