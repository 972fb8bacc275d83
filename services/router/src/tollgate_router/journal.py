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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

State = Literal["started", "streaming", "settling", "settled"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The journal entry as found when claiming (``previous`` is None for a first delivery)."""

    previous: State | None
    attempts: int = 1
    records: str | None = None


class RequestJournal(Protocol):
    async def claim(self, request_id: str, principal: str) -> Claim: ...

    async def streaming(self, request_id: str) -> None: ...

    async def settling(self, request_id: str, records: str) -> None: ...

    async def settled(self, request_id: str) -> None: ...


class InMemoryJournal:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[State, int, str | None]] = {}

    async def claim(self, request_id: str, principal: str) -> Claim:
        row = self.rows.get(request_id)
        if row is None:
            self.rows[request_id] = ("started", 1, None)
            return Claim(None)
        state, attempts, records = row
        self.rows[request_id] = (state, attempts + 1, records)
        return Claim(state, attempts + 1, records)

    async def streaming(self, request_id: str) -> None:
        _, attempts, records = self.rows[request_id]
        self.rows[request_id] = ("streaming", attempts, records)

    async def settling(self, request_id: str, records: str) -> None:
        _, attempts, _ = self.rows[request_id]
        self.rows[request_id] = ("settling", attempts, records)

    async def settled(self, request_id: str) -> None:
        _, attempts, records = self.rows[request_id]
        self.rows[request_id] = ("settled", attempts, records)
