"""Postgres adapters: the request journal and the prepared-response store (schema ``router``).

Every operation here is one statement, run in autocommit: one round trip, with no
``BEGIN``/``COMMIT`` around it and no ping before it (the engine has none; a connection that
died in the pool is replaced and the statement run once more, which is safe because each is
idempotent). A request's journal writes — claim, first token, settling, settled — are each
shared with other requests': claims, first-token marks and settling records are group
commits (:class:`tollgate_core.batching.GroupCommit`: those submitted while the previous
statement of their kind runs go out together in the next), and the settled marks (which also
give the leases back) of every request that finished within ``settled_batch_s`` go out as
one statement. Alone, a write goes out at once.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import time
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollgate_core import db
from tollgate_core.batching import GroupCommit
from tollgate_router.journal import Claim
from tollgate_router.prepared import PreparedResponse


async def _one(engine: AsyncEngine, sql: TextClause, params: dict[str, Any]) -> CursorResult[Any]:
    """One statement in autocommit; its result is buffered, so it outlives the connection."""

    async def execute(conn: AsyncConnection) -> CursorResult[Any]:
        return await conn.execute(sql, params)

    async with db.translated():
        return await db.run(engine, execute, single=True)


#: a batch of claims, in request id order (two routers claiming overlapping batches lock the
#: rows in one order). A live lease of another owner is left alone (and the attempt not
#: counted); an expired or missing one (a row from before leases existed) passes to this
#: attempt. The returned owner tells an attempt whether another holds the request.
_CLAIM = text(
    """
    INSERT INTO router.requests AS r (request_id, principal, state, owner, lease_until)
    SELECT x.rid, x.principal, 'started', x.owner, now() + make_interval(secs => x.lease)
    FROM unnest(CAST(:rids AS text[]), CAST(:principals AS text[]), CAST(:owners AS text[]),
                CAST(:leases AS double precision[])) AS x(rid, principal, owner, lease)
    ORDER BY x.rid
    ON CONFLICT (request_id) DO UPDATE SET
        attempts = r.attempts
            + CASE WHEN r.lease_until > now() AND r.owner <> EXCLUDED.owner THEN 0 ELSE 1 END,
        updated_at = now(),
        owner = CASE WHEN r.lease_until > now() THEN r.owner ELSE EXCLUDED.owner END,
        lease_until = CASE WHEN r.lease_until > now() AND r.owner <> EXCLUDED.owner
                           THEN r.lease_until ELSE EXCLUDED.lease_until END
    RETURNING request_id, state, attempts, records, owner, (xmax = 0) AS inserted
    """
)
_RENEW = text(
    "UPDATE router.requests SET lease_until = now() + make_interval(secs => :lease)"
    " WHERE request_id = :rid AND owner = :owner"
)
_RELEASE = text(
    "UPDATE router.requests SET lease_until = now() WHERE request_id = :rid AND owner = :owner"
)
_STREAMING = text(
    "UPDATE router.requests SET state = 'streaming', updated_at = now()"
    " WHERE request_id = ANY(CAST(:rids AS text[]))"
)
_SETTLING = text(
    "UPDATE router.requests AS r SET state = 'settling', records = x.records, updated_at = now()"
    " FROM unnest(CAST(:rids AS text[]), CAST(:records AS text[])) AS x(rid, records)"
    " WHERE r.request_id = x.rid"
)
#: settled, and the lease given back in the same statement, for a batch of requests
_SETTLED = text(
    "UPDATE router.requests SET state = 'settled', updated_at = now(),"
    " lease_until = LEAST(lease_until, now()) WHERE request_id = ANY(CAST(:rids AS text[]))"
)


class PostgresJournal:
    """``settled_batch_s``: how long a settled mark waits for others to share its statement.
    Nobody waits on the mark but the handler (its record's offset is committed after it), so
    the wait costs no client any time; a mark lost to a crash leaves its row ``settling``,
    whose redelivery republishes the same records, which every consumer drops as duplicates."""

    def __init__(self, engine: AsyncEngine, *, settled_batch_s: float = 0.05) -> None:
        self._engine = engine
        self._settled_batch_s = settled_batch_s
        #: requests this process marked settled whose lease that statement already gave back
        self._released: set[str] = set()
        #: settled marks waiting for the next batch, and the task that writes it
        self._to_settle: dict[str, asyncio.Future[None]] = {}
        self._settler: asyncio.Task[None] | None = None
        self._claims = GroupCommit("journal-claim", self._claim_many)
        self._streaming = GroupCommit("journal-streaming", self._streaming_many)
        self._settling = GroupCommit("journal-settling", self._settling_many)

    async def claim(
        self, request_id: str, principal: str, *, owner: str = "", lease_s: float = 30.0
    ) -> Claim:
        return await self._claims.submit("", (request_id, principal, owner, lease_s))

    async def _claim_many(self, _: str, claims: list[tuple[str, str, str, float]]) -> list[Claim]:
        """One statement per round of distinct request ids: a request claimed twice in one
        batch (a redelivery racing its first delivery) sees its first claim, as it would
        one after the other."""
        found: list[Claim | None] = [None] * len(claims)
        pending = list(range(len(claims)))
        while pending:
            seen: dict[str, int] = {}
            for i in pending:
                seen.setdefault(claims[i][0], i)
            rows = await self._claim_round([claims[i] for i in seen.values()])
            for i in seen.values():
                row = rows[claims[i][0]]
                held = row.owner != claims[i][2]
                found[i] = (
                    Claim(None)
                    if row.inserted
                    else Claim(row.state, row.attempts, row.records, held=held)
                )
            done = set(seen.values())
            pending = [i for i in pending if i not in done]
        return [c for c in found if c is not None]

    async def _claim_round(self, claims: list[tuple[str, str, str, float]]) -> dict[str, Any]:
        rids, principals, owners, leases = (list(c) for c in zip(*claims, strict=True))
        params = {"rids": rids, "principals": principals, "owners": owners, "leases": leases}
        return {row.request_id: row for row in await _one(self._engine, _CLAIM, params)}

    async def renew(self, request_id: str, owner: str, lease_s: float) -> None:
        await _one(self._engine, _RENEW, {"rid": request_id, "owner": owner, "lease": lease_s})

    async def release(self, request_id: str, owner: str) -> None:
        if request_id in self._released:
            self._released.discard(request_id)
            return
        await _one(self._engine, _RELEASE, {"rid": request_id, "owner": owner})

    async def streaming(self, request_id: str) -> None:
        """Returns once the mark is written (the first token may then go out)."""
        await self._streaming.submit("", request_id)

    async def _streaming_many(self, _: str, rids: list[str]) -> list[None]:
        await _one(self._engine, _STREAMING, {"rids": rids})
        return [None] * len(rids)

    async def settling(self, request_id: str, records: str) -> None:
        """Returns once the records are written (the terminal reply may then go out)."""
        await self._settling.submit("", (request_id, records))

    async def _settling_many(self, _: str, items: list[tuple[str, str]]) -> list[None]:
        # a request twice in one batch carries the same records both times (its answer's)
        latest = dict(items)
        params = {"rids": list(latest), "records": list(latest.values())}
        await _one(self._engine, _SETTLING, params)
        return [None] * len(items)

    async def settled(self, request_id: str) -> None:
        """Returns once the mark is written, together with the others of its batch."""
        future = self._to_settle.get(request_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._to_settle[request_id] = future
        if self._settler is None:
            self._settler = asyncio.create_task(self._settle_batches(), name="journal-settled")
        await asyncio.shield(future)
        self._released.add(request_id)

    async def _settle_batches(self) -> None:
        try:
            while self._to_settle:
                await asyncio.sleep(self._settled_batch_s)
                batch, self._to_settle = self._to_settle, {}
                try:
                    await _one(self._engine, _SETTLED, {"rids": list(batch)})
                except Exception as exc:  # noqa: BLE001 - every waiting handler gets it
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for future in batch.values():
                    if not future.done():
                        future.set_result(None)
        finally:
            self._settler = None


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
    """Prepared answers in Postgres. Most requests have none, so the store keeps the set of
    live keys (re-read every ``keys_ttl_s``) and asks Postgres only for a key in it: an
    answer added through another router is served here within ``keys_ttl_s``. With more
    than ``max_cached_keys`` live keys every lookup asks Postgres."""

    def __init__(
        self, engine: AsyncEngine, *, keys_ttl_s: float = 2.0, max_cached_keys: int = 10_000
    ) -> None:
        self._engine = engine
        self._keys_ttl_s = keys_ttl_s
        self._max_keys = max_cached_keys
        self._keys: frozenset[str] | None = None
        self._keys_read_at = -math.inf

    async def _live_keys(self, now: datetime) -> frozenset[str] | None:
        """The live keys, or None when there are too many to keep."""
        if time.monotonic() - self._keys_read_at > self._keys_ttl_s:
            sql = text(
                "SELECT DISTINCT key FROM router.prepared_responses WHERE expires_at > :now"
                " LIMIT :limit"
            )
            rows = (await _one(self._engine, sql, {"now": now, "limit": self._max_keys + 1})).all()
            keys = frozenset(r.key for r in rows)
            self._keys = None if len(keys) > self._max_keys else keys
            self._keys_read_at = time.monotonic()
        return self._keys

    def _forget_keys(self) -> None:
        self._keys_read_at = -math.inf

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
        added = _entry((await _one(self._engine, sql, params)).one())
        self._forget_keys()
        return added

    async def list(self, *, principal: str | None = None) -> builtins.list[PreparedResponse]:
        sql = text(
            f"SELECT {_COLUMNS} FROM router.prepared_responses"  # noqa: S608
            " WHERE CAST(:principal AS text) IS NULL OR principal = :principal"
            " ORDER BY created_at"
        )
        rows = (await _one(self._engine, sql, {"principal": principal})).all()
        return [_entry(r) for r in rows]

    async def remove(self, entry_id: str) -> bool:
        sql = text("DELETE FROM router.prepared_responses WHERE id = :id")
        removed = (await _one(self._engine, sql, {"id": entry_id})).rowcount > 0
        self._forget_keys()
        return removed

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
        keys = await self._live_keys(now)
        if keys is not None and key not in keys:
            return None
        params = {"key": key, "model": model, "principal": principal, "now": now}
        row = (await _one(self._engine, sql, params)).first()
        return _entry(row) if row is not None else None

    async def purge_expired(self, now: datetime) -> int:
        sql = text("DELETE FROM router.prepared_responses WHERE expires_at <= :now")
        return int((await _one(self._engine, sql, {"now": now})).rowcount)
