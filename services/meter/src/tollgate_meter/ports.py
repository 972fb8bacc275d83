"""What the meter needs of its ledger, by who needs it.

The handlers, the batcher, the sweeper and the usage API depend on these protocols and the
values they exchange, never on the Postgres adapter (``adapters/postgres``); tests can hand
them any object that keeps the same promises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from tollgate_core.contracts import UsageRecordV1
from tollgate_meter.domain import Estimate
from tollgate_meter.limits import TierSpec, Violation, WindowSpec, WindowUsage


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """One request of a principal to decide."""

    request_id: str
    model: str | None
    groups: tuple[str, ...]
    estimate: Estimate
    #: the tier the auth policy names for the caller (one more candidate beside its groups')
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    tier: str
    violation: Violation | None = None
    #: the request was decided before (a redelivery); nothing was reserved again
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    principal: str
    status: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class UsageReport:
    principal: str
    tier: str
    windows: list[WindowUsage]
    by_model: list[dict[str, Any]]


class Admissions(Protocol):
    async def admit_many(
        self, principal: str, requests: Sequence[AdmissionRequest], now: datetime
    ) -> list[Decision]:
        """Decide a principal's requests in order, each against the counters plus what the
        ones before it reserved; a request decided before gets its earlier decision
        (``repeated``) and reserves nothing again. No limit is ever exceeded, however many
        callers (or meter replicas) admit for the principal at once."""


class Settlements(Protocol):
    async def settle(self, usage: UsageRecordV1, now: datetime) -> bool:
        """Replace the request's reservation by its usage, once (False: settled before)."""


class BatchSettlements(Settlements, Protocol):
    async def settle_many(self, usages: Sequence[UsageRecordV1], now: datetime) -> list[bool]:
        """:meth:`settle` for each record, in one transaction (all or none)."""


class Upkeep(Protocol):
    """What the sweeper does to the ledger."""

    async def release_expired(self, cutoff: datetime, limit: int = 500) -> int: ...

    async def prune(self, now: datetime) -> int: ...

    async def prune_reservations(
        self, now: datetime, margin: timedelta, limit: int = 1000
    ) -> int: ...


class Reports(Protocol):
    async def report(self, principal: str, groups: Sequence[str], now: datetime) -> UsageReport: ...

    async def overview(self, now: datetime, top: int = 20) -> dict[str, Any]: ...

    async def get(self, request_id: str) -> Reservation | None: ...


class TierAdmin(Protocol):
    async def tiers(self) -> dict[str, TierSpec]: ...

    async def set_tier(self, name: str, spec: TierSpec) -> None: ...

    async def delete_tier(self, name: str) -> bool: ...

    async def set_principal(
        self, principal: str, tier: str | None, windows: Sequence[WindowSpec] | None
    ) -> None: ...

    async def principal_limits(self, principal: str) -> dict[str, Any] | None: ...


class UsageApiLedger(Reports, TierAdmin, Protocol):
    """What the usage and admin API reads and changes."""


class Ledger(Admissions, BatchSettlements, Upkeep, Reports, TierAdmin, Protocol):
    """Everything the meter does with its ledger."""
