"""The reservation ledger: a small interface, its Postgres adapter and an in-memory fake."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_core.contracts import UsageRecordV1
from tollgate_core.errors import DependencyUnavailable
from tollgate_meter.domain import Estimate

metadata = sa.MetaData(schema="meter")

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("principal", sa.Text, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("reserved_input", sa.Integer, nullable=False),
    sa.Column("reserved_output", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("input_tokens", sa.Integer),
    sa.Column("output_tokens", sa.Integer),
    sa.Column("cost_usd", sa.Numeric(18, 8)),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("settled_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    principal: str
    status: str
    input_tokens: int | None
    output_tokens: int | None


class Ledger(Protocol):
    async def reserve(
        self, request_id: str, principal: str, model: str | None, estimate: Estimate
    ) -> bool:
        """Record a reservation; False when ``request_id`` was already reserved."""

    async def settle(self, usage: UsageRecordV1) -> bool:
        """Replace the reservation by real usage; False when already settled."""

    async def get(self, request_id: str) -> Reservation | None: ...


class PostgresLedger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def reserve(
        self, request_id: str, principal: str, model: str | None, estimate: Estimate
    ) -> bool:
        stmt = (
            insert(reservations)
            .values(
                request_id=request_id,
                principal=principal,
                model=model,
                reserved_input=estimate.input_tokens,
                reserved_output=estimate.output_tokens,
                status="reserved",
            )
            .on_conflict_do_nothing(index_elements=["request_id"])
        )
        async with _translated(), self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return result.rowcount == 1

    async def settle(self, usage: UsageRecordV1) -> bool:
        values = {
            "status": "settled",
            "input_tokens": usage.usage.input_tokens,
            "output_tokens": usage.usage.output_tokens,
            "cost_usd": usage.cost_usd,
            "settled_at": sa.func.now(),
        }
        update = (
            sa.update(reservations)
            .where(reservations.c.request_id == usage.request_id)
            .where(reservations.c.status != "settled")
            .values(**values)
        )
        async with _translated(), self._engine.begin() as conn:
            result = await conn.execute(update)
            if result.rowcount == 1:
                return True
            # Usage for a request this meter never reserved (e.g. reserved before a restore):
            # record it so the ledger still equals the usage stream.
            inserted = await conn.execute(
                insert(reservations)
                .values(
                    request_id=usage.request_id,
                    principal=usage.principal,
                    model=usage.model,
                    reserved_input=0,
                    reserved_output=0,
                    **values,
                )
                .on_conflict_do_nothing(index_elements=["request_id"])
            )
            return inserted.rowcount == 1

    async def get(self, request_id: str) -> Reservation | None:
        query = sa.select(
            reservations.c.request_id,
            reservations.c.principal,
            reservations.c.status,
            reservations.c.input_tokens,
            reservations.c.output_tokens,
        ).where(reservations.c.request_id == request_id)
        async with _translated(), self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else Reservation(*row)


class _translated:
    """Postgres trouble becomes :class:`DependencyUnavailable` (retriable) at this edge."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError | OperationalError | DBAPIError | TimeoutError):
            raise DependencyUnavailable(f"Postgres unavailable: {exc}") from exc


class InMemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[str, Reservation] = {}
        self.cost: dict[str, Decimal] = {}

    async def reserve(
        self, request_id: str, principal: str, model: str | None, estimate: Estimate
    ) -> bool:
        if request_id in self.rows:
            return False
        self.rows[request_id] = Reservation(request_id, principal, "reserved", None, None)
        return True

    async def settle(self, usage: UsageRecordV1) -> bool:
        row = self.rows.get(usage.request_id)
        if row is not None and row.status == "settled":
            return False
        self.rows[usage.request_id] = Reservation(
            usage.request_id,
            usage.principal,
            "settled",
            usage.usage.input_tokens,
            usage.usage.output_tokens,
        )
        self.cost[usage.request_id] = usage.cost_usd
        return True

    async def get(self, request_id: str) -> Reservation | None:
        return self.rows.get(request_id)
