"""Postgres plumbing shared by the services that own a schema: engines and Alembic.

Each service keeps its tables in its own schema and its migrations in its own package
(``<package>/migrations``); :func:`migrate` upgrades one of them to head, and the
``env.py`` of each migrations folder is one call to :func:`run_alembic_env`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command, context
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_core.settings import DatabaseSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")


def create_engine(
    settings: DatabaseSettings, *, application_name: str, pre_ping: bool = True
) -> AsyncEngine:
    """An asyncpg engine with a pool of ``database_pool_size`` connections and no overflow:
    a caller finding every connection busy waits for one (``database_pool_timeout_s``).
    Overflow connections would be opened and closed again around single statements under
    load — a new Postgres backend, a new statement cache — which in ``make bench`` cost the
    router a fifth of its throughput and doubled Postgres' CPU per request.

    ``pre_ping`` tests each connection with a round trip before handing it out, so one that
    died while pooled (Postgres restarted) is replaced silently. Without it a dead connection
    fails on its first statement with a ``DBAPIError`` whose ``connection_invalidated`` is
    true; SQLAlchemy then discards it and every connection pooled before it, so a caller that
    runs its (idempotent) work once more gets a fresh connection. The meter does that to save
    the round trip on its hot path.
    """
    return create_async_engine(
        settings.async_url,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout_s,
        pool_pre_ping=pre_ping,
        connect_args={
            "server_settings": {"application_name": f"tollgate-{application_name}"},
            "timeout": 5,
            "command_timeout": settings.database_command_timeout_s,
        },
    )


async def run(
    engine: AsyncEngine,
    body: Callable[[AsyncConnection], Awaitable[T]],
    *,
    write: bool = True,
    single: bool = False,
) -> T:
    """``body`` on a connection of ``engine`` — in a transaction when it writes — run once
    more on a fresh connection if the pooled one turns out to have died (Postgres
    restarted). For engines without ``pre_ping``, and bodies that are safe to run twice.

    ``single``: the body runs one statement (atomic by itself), so it runs in autocommit:
    one round trip, without the ``BEGIN`` and ``COMMIT`` (or ``ROLLBACK``) around it."""
    try:
        try:
            return await _attempt(engine, body, write, single)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        return await _attempt(engine, body, write, single)
    except PoolTimeout as exc:
        raise DependencyUnavailable(f"Postgres: no free connection ({exc})") from exc


async def _attempt(
    engine: AsyncEngine,
    body: Callable[[AsyncConnection], Awaitable[T]],
    write: bool,
    single: bool,
) -> T:
    if single:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await body(conn)
    if write:
        async with engine.begin() as conn:
            return await body(conn)
    async with engine.connect() as conn:
        return await body(conn)


async def ping(engine: AsyncEngine) -> None:
    """Raise :class:`DependencyUnavailable` unless Postgres answers (asking twice when the
    first connection turns out to have died in the pool)."""

    async def select(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT 1"))

    try:
        await run(engine, select, write=False)
    except (OSError, DBAPIError, TimeoutError) as exc:
        raise DependencyUnavailable(f"Postgres unreachable: {exc}") from exc


def _alembic_config(migrations: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def migrate(settings: DatabaseSettings, migrations: Path) -> None:
    """Upgrade the schema whose migrations live in ``migrations`` to head."""
    config = _alembic_config(migrations, settings.async_url)
    try:
        await asyncio.to_thread(command.upgrade, config, "head")
    except (OSError, OperationalError, DBAPIError) as exc:
        raise DependencyUnavailable(f"cannot migrate {migrations.parent.name}: {exc}") from exc


def run_alembic_env(schema: str) -> None:
    """The body of every service's ``migrations/env.py`` (online mode, asyncpg)."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set")

    def _run(connection: Connection) -> None:
        # Replicas starting together migrate one at a time: the lock is held until commit.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            version_table_schema=schema,
            include_schemas=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def _main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_run)
        finally:
            await engine.dispose()

    asyncio.run(_main())


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Postgres trouble becomes :class:`DependencyUnavailable` (retriable) at this edge; a
    value Postgres cannot take (a number out of its column's range, a NUL in a text) is the
    caller's bad input, :class:`RequestError`, never an outage; a statement Postgres refuses
    as written (a constraint, a syntax error) is a bug and passes through as it is."""
    try:
        yield
    except (IntegrityError, ProgrammingError):
        raise
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
