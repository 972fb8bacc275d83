"""Reading the meter's ledger from end-to-end tests."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tollgate_core.settings import DatabaseSettings


class Settled(NamedTuple):
    status: str
    input_tokens: int
    output_tokens: int
    principal: str


async def wait_settled(database_url: str, request_id: str, timeout: float = 20) -> Settled:
    """The ledger row of ``request_id`` once the meter has settled it."""
    url = DatabaseSettings(database_url=SecretStr(database_url)).async_url
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(
                            text(
                                "SELECT status, input_tokens, output_tokens, principal "
                                "FROM meter.reservations WHERE request_id = :r"
                            ),
                            {"r": request_id},
                        )
                    ).first()
                if row is not None and row.status == "settled":
                    return Settled(row.status, row.input_tokens, row.output_tokens, row.principal)
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


async def reserved(database_url: str, request_id: str) -> tuple[int, int]:
    """What the meter reserved for ``request_id``: (input, output) tokens."""
    url = DatabaseSettings(database_url=SecretStr(database_url)).async_url
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT reserved_input, reserved_output FROM meter.reservations"
                        " WHERE request_id = :r"
                    ),
                    {"r": request_id},
                )
            ).one()
        return int(row.reserved_input), int(row.reserved_output)
    finally:
        await engine.dispose()
