"""Tier administration: admin-set tiers (over the file's) and a principal's own tier or
windows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate_meter.adapters.postgres.store import Store
from tollgate_meter.limits import TierSpec, WindowSpec

_SET_TIER = text(
    "INSERT INTO meter.tiers (name, spec) VALUES (:n, CAST(:s AS jsonb))"
    " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now()"
)
_DELETE_TIER = text("DELETE FROM meter.tiers WHERE name = :n")
_SET_PRINCIPAL = text(
    "INSERT INTO meter.principals (principal, tier, windows)"
    " VALUES (:p, :t, CAST(:w AS jsonb)) ON CONFLICT (principal) DO UPDATE"
    " SET tier = EXCLUDED.tier, windows = EXCLUDED.windows, updated_at = now()"
)
_PRINCIPAL = text("SELECT tier, windows FROM meter.principals WHERE principal = :p")


class TierSql(Store):
    async def tiers(self) -> dict[str, TierSpec]:
        async def tiers(conn: AsyncConnection) -> dict[str, TierSpec]:
            self._forget_tiers()
            return {**self._config.tiers, **await self._tier_overrides(conn)}

        return await self._run(tiers, write=False)

    async def set_tier(self, name: str, spec: TierSpec) -> None:
        async def set_tier(conn: AsyncConnection) -> None:
            await conn.execute(_SET_TIER, {"n": name, "s": spec.model_dump_json()})

        await self._run(set_tier)
        self._forget_tiers()

    async def delete_tier(self, name: str) -> bool:
        async def delete_tier(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(_DELETE_TIER, {"n": name})).rowcount)

        # run twice after a lost commit, it answers False for a tier it did delete: rare, and
        # the tier is gone either way
        deleted = await self._run(delete_tier)
        self._forget_tiers()
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
            await conn.execute(_SET_PRINCIPAL, {"p": principal, "t": tier, "w": payload})

        await self._run(set_principal)

    async def principal_limits(self, principal: str) -> dict[str, Any] | None:
        async def limits(conn: AsyncConnection) -> dict[str, Any] | None:
            row = (await conn.execute(_PRINCIPAL, {"p": principal})).first()
            return None if row is None else {"tier": row.tier, "windows": row.windows}

        return await self._run(limits, write=False)
