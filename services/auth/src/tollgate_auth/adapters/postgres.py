"""The ``auth`` schema: API keys and run-time group policies."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_auth.apikeys import ApiKey
from tollgate_auth.domain import GroupPolicy
from tollgate_core.contracts import utcnow
from tollgate_core.errors import DependencyUnavailable

metadata = sa.MetaData(schema="auth")

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("principal", sa.Text, nullable=False),
    sa.Column("groups", ARRAY(sa.Text), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

group_policies = sa.Table(
    "group_policies",
    metadata,
    sa.Column("group_name", sa.Text, primary_key=True),
    sa.Column("models", ARRAY(sa.Text), nullable=False),
    sa.Column("tier", sa.Text),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (OSError, OperationalError, DBAPIError, TimeoutError, PoolTimeout) as exc:
        raise DependencyUnavailable(f"Postgres: {exc}") from exc


def _key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        principal=row.principal,
        groups=tuple(row.groups),
        name=row.name,
        key_hash=row.key_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class PostgresApiKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, key: ApiKey) -> None:
        async with _translated(), self._engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    key_id=key.key_id,
                    principal=key.principal,
                    groups=list(key.groups),
                    name=key.name,
                    key_hash=key.key_hash,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=key.revoked_at,
                )
            )

    async def get(self, key_id: str) -> ApiKey | None:
        async with _translated(), self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id))
            ).first()
        return _key(row) if row is not None else None

    async def list(self, principal: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if principal is not None:
            query = query.where(api_keys.c.principal == principal)
        async with _translated(), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        stmt = (
            api_keys.update()
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with _translated(), self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)


class PostgresPolicyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def all(self) -> dict[str, GroupPolicy]:
        async with _translated(), self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(group_policies))).all()
        return {
            row.group_name: GroupPolicy(models=tuple(row.models), tier=row.tier, rank=row.rank)
            for row in rows
        }

    async def put(self, group: str, policy: GroupPolicy) -> None:
        values = {
            "models": list(policy.models),
            "tier": policy.tier,
            "rank": policy.rank,
            "updated_at": utcnow(),
        }
        stmt = insert(group_policies).values(group_name=group, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["group_name"], set_=values)
        async with _translated(), self._engine.begin() as conn:
            await conn.execute(stmt)

    async def delete(self, group: str) -> bool:
        stmt = group_policies.delete().where(group_policies.c.group_name == group)
        async with _translated(), self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)
