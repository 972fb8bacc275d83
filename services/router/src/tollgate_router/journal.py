"""The request journal: what the router has done for each request_id, so a redelivered
admission never produces a second usage record.

States, in order: ``started`` (claimed, nothing sent) → ``streaming`` (the first token went
out) → ``settling`` (the usage and log records and the terminal reply are written here,
then published) →
``settled`` (published). On redelivery:

- ``started``: nothing reached the client; serve the request again (the provider call of the
  dead attempt produced no visible token and its usage was never reported to us).
- ``streaming``: the client saw part of an answer from a process that died; the provider's
  usage for it is unknowable. End the stream with ``stream_interrupted`` and settle what the
  journal recorded (zero provider-reported tokens), once; never call the provider again.
- ``settling``: republish the stored terminal reply and records verbatim (same request_id
  and seq; the edge drops a reply it delivered, the meter settles a request_id once), then
  mark settled.
- ``settled``: nothing to do.

Each attempt also holds a **lease** on its row (an owner token and an expiry it renews while
it works, and gives up when it ends). A redelivery that finds the lease held by another live
attempt — the partition moved to another router in a rebalance while the first still streams
— neither serves nor interrupts: it fails with a retriable error and the consumer tries again
later, by when the first attempt has settled or its lease has run out (its router died).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

State = Literal["started", "streaming", "settling", "settled"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The journal entry as found when claiming (``previous`` is None for a first delivery)."""

    previous: State | None
    attempts: int = 1
    records: str | None = None
    #: another attempt's lease is live: it is still working on this request
    held: bool = False


class RequestJournal(Protocol):
    async def claim(
        self, request_id: str, principal: str, *, owner: str = "", lease_s: float = 30.0
    ) -> Claim:
        """Record this attempt, taking the lease unless another attempt's is live."""
        ...

    async def renew(self, request_id: str, owner: str, lease_s: float) -> None: ...

    async def release(self, request_id: str, owner: str) -> None: ...

    async def streaming(self, request_id: str) -> None: ...

    async def settling(self, request_id: str, records: str) -> None: ...

    async def settled(self, request_id: str) -> None: ...


class InMemoryJournal:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[State, int, str | None]] = {}
        #: request_id → (owner, lease expiry on the monotonic clock)
        self.leases: dict[str, tuple[str, float]] = {}

    async def claim(
        self, request_id: str, principal: str, *, owner: str = "", lease_s: float = 30.0
    ) -> Claim:
        now = time.monotonic()
        row = self.rows.get(request_id)
        if row is None:
            self.rows[request_id] = ("started", 1, None)
            self.leases[request_id] = (owner, now + lease_s)
            return Claim(None)
        state, attempts, records = row
        holder, until = self.leases.get(request_id, ("", 0.0))
        if until > now and holder != owner:
            return Claim(state, attempts, records, held=True)
        self.leases[request_id] = (owner, now + lease_s)
        self.rows[request_id] = (state, attempts + 1, records)
        return Claim(state, attempts + 1, records)

    async def renew(self, request_id: str, owner: str, lease_s: float) -> None:
        if self.leases.get(request_id, ("", 0.0))[0] == owner:
            self.leases[request_id] = (owner, time.monotonic() + lease_s)

    async def release(self, request_id: str, owner: str) -> None:
        if self.leases.get(request_id, ("", 0.0))[0] == owner:
            self.leases[request_id] = (owner, 0.0)

    async def streaming(self, request_id: str) -> None:
        _, attempts, records = self.rows[request_id]
        self.rows[request_id] = ("streaming", attempts, records)

    async def settling(self, request_id: str, records: str) -> None:
        _, attempts, _ = self.rows[request_id]
        self.rows[request_id] = ("settling", attempts, records)

    async def settled(self, request_id: str) -> None:
        _, attempts, records = self.rows[request_id]
        self.rows[request_id] = ("settled", attempts, records)
