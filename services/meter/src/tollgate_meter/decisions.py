"""Deciding a batch of one principal's requests against its counters: no I/O.

A ledger reads the principal's counters and the decisions already written for the batch's
request ids, hands them to :class:`Batch`, and writes :attr:`Batch.rows` back. Each request
is checked against the counters as read plus what the requests before it in the batch
reserved, so a batch admits exactly what one-by-one admission would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tollgate_meter.limits import (
    Bucket,
    Totals,
    Violation,
    WindowSpec,
    bucket_start,
    check,
    window_usage,
)
from tollgate_meter.ports import AdmissionRequest, Decision

#: one row to write per decided request: id, model, reserved input and output, status
#: (``reserved`` or ``rejected``), tier, the refusal as JSON
Row = tuple[str, str | None, int, int, str, str, str | None]


class Batch:
    """The decisions of one admission batch: the rows to write, and what the requests
    admitted so far in it reserved, which the counters as read (``buckets``, ``month``) show
    to the requests after them."""

    def __init__(
        self,
        now: datetime,
        bucket_seconds: int,
        counters: tuple[list[Bucket], Bucket | None],
        previous: Mapping[str, Any],
    ) -> None:
        self.now = now
        self.bucket_seconds = bucket_seconds
        self.bucket = bucket_start(now, bucket_seconds)
        self._buckets, self._month = counters
        #: the stored decision (``tier``, ``rejection``) of each request id decided before
        self._previous = dict(previous)
        self.rows: list[Row] = []
        self.reserved = Totals()

    @property
    def admitted(self) -> int:
        return self.reserved.requests

    @property
    def buckets(self) -> list[Bucket]:
        if not self.admitted:
            return self._buckets
        return [*self._buckets, Bucket(self.bucket, Totals(), self.reserved)]

    @property
    def month(self) -> Bucket | None:
        if not self.admitted:
            return self._month
        used, reserved = Totals(), Totals()
        if self._month is not None:
            used.add(self._month.used)
            reserved.add(self._month.reserved)
        reserved.add(self.reserved)
        return Bucket(self.now, used, reserved)

    def decide(
        self, request: AdmissionRequest, limit: tuple[str, Sequence[WindowSpec]]
    ) -> Decision:
        """One request: the decision already written for its id (a redelivery), else checked
        against the counters plus what the batch reserved before it."""
        earlier = self._previous.get(request.request_id)
        if earlier is not None:
            violation = violation_from(earlier.get("rejection"))
            return Decision(violation is None, earlier.get("tier") or "", violation, True)
        tier, windows = limit
        usages = [
            window_usage(w, self.buckets, self.month, self.now, self.bucket_seconds)
            for w in windows
        ]
        estimate = request.estimate
        violation = check(
            usages, Totals(estimate.input_tokens, estimate.output_tokens, 1), self.now
        )
        self._add(request, tier, violation)
        self._previous[request.request_id] = {
            "tier": tier,
            "rejection": violation.details() if violation else None,
        }
        return Decision(violation is None, tier, violation)

    def _add(self, request: AdmissionRequest, tier: str, violation: Violation | None) -> None:
        est = request.estimate
        rejection = json.dumps(violation.details()) if violation else None
        status = "rejected" if violation else "reserved"
        self.rows.append(
            (request.request_id, request.model, est.input_tokens, est.output_tokens, status,
             tier, rejection)
        )  # fmt: skip
        if violation is None:
            self.reserved.add(Totals(est.input_tokens, est.output_tokens, 1))


def violation_from(raw: Any) -> Violation | None:
    """A refusal as stored (JSON text or an object) back as a :class:`Violation`."""
    if not raw:
        return None
    data = raw if isinstance(raw, dict) else json.loads(raw)
    return Violation(
        window=data["window"],
        dimension=data["limit_type"],
        limit=data["limit"],
        used=data["used"],
        requested=data["requested"],
        retry_after_s=data["retry_after_s"],
    )
