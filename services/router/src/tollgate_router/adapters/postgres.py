"""Postgres adapters: the request journal and the prepared-response store (schema ``router``)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollgate_core.errors import DependencyUnavailable
from tollgate_router.journal import Claim, State
from tollgate_router.prepared import PreparedResponse


@asynccontextmanager
async def _tx(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    try:
        async with engine.begin() as conn:
            yield conn
    except (OSError, OperationalError, DBAPIError, TimeoutError) as exc:
        raise DependencyUnavailable(f"Postgres: {type(exc).__name__}: {exc}") from exc


#: a live lease of another owner is left alone (and the attempt not counted); an expired or
#: missing one (a row from before leases existed) passes to this attempt
_CLAIM = text(
    """
    INSERT INTO router.requests (request_id, principal, state, owner, lease_until)
    VALUES (:rid, :principal, 'started', :owner, now() + make_interval(secs => :lease))
    ON CONFLICT (request_id) DO UPDATE SET
        attempts = router.requests.attempts
            + CASE WHEN router.requests.lease_until > now()
                    AND router.requests.owner <> EXCLUDED.owner THEN 0 ELSE 1 END,
        updated_at = now(),
        owner = CASE WHEN router.requests.lease_until > now() THEN router.requests.owner
                     ELSE EXCLUDED.owner END,
        lease_until = CASE WHEN router.requests.lease_until > now()
                            AND router.requests.owner <> EXCLUDED.owner
                           THEN router.requests.lease_until ELSE EXCLUDED.lease_until END
    RETURNING state, attempts, records, (xmax = 0) AS inserted, owner <> :owner AS held
    """
)
_RENEW = text(
    "UPDATE router.requests SET lease_until = now() + make_interval(secs => :lease)"
    " WHERE request_id = :rid AND owner = :owner"
)
_RELEASE = text(
    "UPDATE router.requests SET lease_until = now() WHERE request_id = :rid AND owner = :owner"
)
_SET = text(
    "UPDATE router.requests SET state = :state, records = COALESCE(:records, records),"
    " updated_at = now() WHERE request_id = :rid"
)


class PostgresJournal:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, request_id: str, principal: str, *, owner: str = "", lease_s: float = 30.0
    ) -> Claim:
        params = {"rid": request_id, "principal": principal, "owner": owner, "lease": lease_s}
        async with _tx(self._engine) as conn:
            row = (await conn.execute(_CLAIM, params)).one()
        if row.inserted:
            return Claim(None)
        return Claim(row.state, row.attempts, row.records, held=bool(row.held))

    async def renew(self, request_id: str, owner: str, lease_s: float) -> None:
        async with _tx(self._engine) as conn:
            await conn.execute(_RENEW, {"rid": request_id, "owner": owner, "lease": lease_s})

    async def release(self, request_id: str, owner: str) -> None:
        async with _tx(self._engine) as conn:
            await conn.execute(_RELEASE, {"rid": request_id, "owner": owner})

    async def _set(self, request_id: str, state: State, records: str | None = None) -> None:
        async with _tx(self._engine) as conn:
            await conn.execute(_SET, {"rid": request_id, "state": state, "records": records})

    async def streaming(self, request_id: str) -> None:
        await self._set(request_id, "streaming")

    async def settling(self, request_id: str, records: str) -> None:
        await self._set(request_id, "settling", records)

    async def settled(self, request_id: str) -> None:
        await self._set(request_id, "settled")


def _entry(row: Any) -> PreparedResponse:
    return PreparedResponse(
        id=row.id,
        key=row.key,
        model_scope=row.model_scope,
        principal=row.principal,
        response=row.response,
        expires_at=row.expires_at,
        created_at=row.created_at,
        description=row.description,
    )


_COLUMNS = "id, key, model_scope, principal, response, description, expires_at, created_at"


class PostgresPreparedStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, entry: PreparedResponse) -> PreparedResponse:
        sql = text(
            f"""
            INSERT INTO router.prepared_responses
                (id, key, model_scope, principal, scope_principal, response, description,
                 expires_at, created_at)
            VALUES (:id, :key, :model_scope, :principal, COALESCE(:principal, ''), :response,
                    :description, :expires_at, :created_at)
            ON CONFLICT (key, model_scope, scope_principal) DO UPDATE
                SET id = EXCLUDED.id, response = EXCLUDED.response,
                    description = EXCLUDED.description, expires_at = EXCLUDED.expires_at,
                    created_at = EXCLUDED.created_at
            RETURNING {_COLUMNS}
            """  # noqa: S608 - a constant column list
        )
        params = {
            "id": entry.id,
            "key": entry.key,
            "model_scope": entry.model_scope,
            "principal": entry.principal,
            "response": entry.response,
            "description": entry.description,
            "expires_at": entry.expires_at,
            "created_at": entry.created_at,
        }
        async with _tx(self._engine) as conn:
            return _entry((await conn.execute(sql, params)).one())

    async def list(self, *, principal: str | None = None) -> builtins.list[PreparedResponse]:
        sql = text(
            f"SELECT {_COLUMNS} FROM router.prepared_responses"  # noqa: S608
            " WHERE CAST(:principal AS text) IS NULL OR principal = :principal"
            " ORDER BY created_at"
        )
        async with _tx(self._engine) as conn:
            rows = (await conn.execute(sql, {"principal": principal})).all()
        return [_entry(r) for r in rows]

    async def remove(self, entry_id: str) -> bool:
        sql = text("DELETE FROM router.prepared_responses WHERE id = :id")
        async with _tx(self._engine) as conn:
            return (await conn.execute(sql, {"id": entry_id})).rowcount > 0

    async def lookup(
        self, key: str, *, model: str, principal: str, now: datetime
    ) -> PreparedResponse | None:
        sql = text(
            f"""
            SELECT {_COLUMNS} FROM router.prepared_responses
            WHERE key = :key AND model_scope IN (:model, '*')
              AND (principal = :principal OR principal IS NULL) AND expires_at > :now
            ORDER BY principal IS NULL, model_scope = '*'
            LIMIT 1
            """  # noqa: S608
        )
        params = {"key": key, "model": model, "principal": principal, "now": now}
        async with _tx(self._engine) as conn:
            row = (await conn.execute(sql, params)).first()
        return _entry(row) if row is not None else None

    async def purge_expired(self, now: datetime) -> int:
        sql = text("DELETE FROM router.prepared_responses WHERE expires_at <= :now")
        async with _tx(self._engine) as conn:
            return (await conn.execute(sql, {"now": now})).rowcount
