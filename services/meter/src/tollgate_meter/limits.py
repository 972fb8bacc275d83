"""Limit tiers and their windows: the pure arithmetic of admission.

A *trailing* window of length L sums the time buckets (of ``bucket_seconds``) that overlap
the last L seconds, so it never under-counts: a bucket leaves the window when its end is more
than L seconds ago. A *calendar month* window sums everything since the first of the month
(UTC) and resets then. Each window may limit input, output and total tokens and requests; a
limit left out is not enforced.
"""

from __future__ import annotations

import tomllib
from calendar import monthrange
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Dimension = Literal["input", "output", "total", "requests"]
DIMENSIONS: tuple[Dimension, ...] = ("input", "output", "total", "requests")


class WindowSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: Literal["trailing", "calendar-month"]
    seconds: int | None = Field(default=None, gt=0, le=366 * 86400)
    input: int | None = Field(default=None, ge=0)
    output: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)
    requests: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _length(self) -> WindowSpec:
        if (self.kind == "trailing") != (self.seconds is not None):
            raise ValueError("a trailing window needs seconds; a calendar window takes none")
        return self

    def limit(self, dimension: Dimension) -> int | None:
        value: int | None = getattr(self, dimension)
        return value


class TierSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    windows: tuple[WindowSpec, ...] = ()
    #: when a caller's groups map to several tiers, the highest rank wins
    rank: int = 0


DEFAULT_TIERS: dict[str, TierSpec] = {
    "standard": TierSpec(
        windows=(
            WindowSpec(
                name="rolling-10m", kind="trailing", seconds=600, input=5_000, output=10_000
            ),
            WindowSpec(name="daily", kind="trailing", seconds=86_400, input=10_000, output=20_000),
            WindowSpec(name="monthly", kind="calendar-month", input=100_000, output=200_000),
        ),
    ),
    "premium": TierSpec(
        rank=10,
        windows=(
            WindowSpec(
                name="rolling-10m", kind="trailing", seconds=600, input=50_000, output=100_000
            ),
            WindowSpec(
                name="daily", kind="trailing", seconds=86_400, input=100_000, output=200_000
            ),
            WindowSpec(name="monthly", kind="calendar-month", input=1_000_000, output=2_000_000),
        ),
    ),
    "admin": TierSpec(rank=100),
}


class TierConfig(BaseModel):
    """The tiers file (TOML): tiers, which groups map to which tier, and the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_tier: str = "standard"
    tiers: dict[str, TierSpec] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    groups: dict[str, str] = Field(default_factory=lambda: {"premium": "premium", "admin": "admin"})

    @model_validator(mode="after")
    def _known(self) -> TierConfig:
        unknown = {self.default_tier, *self.groups.values()} - set(self.tiers)
        if unknown:
            raise ValueError(f"unknown tiers: {sorted(unknown)}")
        return self

    @classmethod
    def load(cls, path: Path | None) -> TierConfig:
        if path is None:
            return cls()
        return cls.model_validate(tomllib.loads(path.read_text()))

    def tier_for(
        self,
        groups: Iterable[str],
        overrides: Mapping[str, TierSpec],
        forced: str | None,
        policy_tier: str | None = None,
    ) -> tuple[str, TierSpec]:
        """The tier of a caller: a per-principal tier first, else the highest-ranked of the
        tiers its groups map to and the one its auth policy names (``policy_tier``; a name
        no tier has is ignored), else the default. Admin-set tiers override the file's."""
        tiers = {**self.tiers, **overrides}
        if forced is not None and forced in tiers:
            return forced, tiers[forced]
        candidates = [self.groups[g] for g in groups if self.groups.get(g) in tiers]
        if policy_tier is not None and policy_tier in tiers:
            candidates.append(policy_tier)
        name = max(candidates, key=lambda t: tiers[t].rank, default=self.default_tier)
        return name, tiers[name]


@dataclass
class Totals:
    input: int = 0
    output: int = 0
    requests: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    def get(self, dimension: Dimension) -> int:
        return int(getattr(self, dimension))

    def add(self, other: Totals) -> None:
        self.input += other.input
        self.output += other.output
        self.requests += other.requests

    def plus(self, other: Totals) -> Totals:
        """A new total of both."""
        return Totals(
            self.input + other.input, self.output + other.output, self.requests + other.requests
        )


@dataclass(frozen=True)
class Bucket:
    start: datetime
    used: Totals
    reserved: Totals

    @property
    def counted(self) -> Totals:
        return self.used.plus(self.reserved)


@dataclass
class WindowUsage:
    spec: WindowSpec
    used: Totals = field(default_factory=Totals)
    reserved: Totals = field(default_factory=Totals)
    resets_at: datetime | None = None
    #: for trailing windows: (when each bucket leaves the window, what it counts), oldest first
    leaving: list[tuple[datetime, Totals]] = field(default_factory=list)

    @property
    def counted(self) -> Totals:
        return self.used.plus(self.reserved)


@dataclass(frozen=True)
class Violation:
    window: str
    dimension: Dimension
    limit: int
    used: int
    requested: int
    retry_after_s: int | None

    def details(self) -> dict[str, object]:
        return {
            "window": self.window,
            "limit_type": self.dimension,
            "limit": self.limit,
            "used": self.used,
            "requested": self.requested,
            "retry_after_s": self.retry_after_s,
        }

    def message(self) -> str:
        what = "requests" if self.dimension == "requests" else f"{self.dimension} tokens"
        when = (
            f"; retry in {self.retry_after_s} s"
            if self.retry_after_s is not None
            else "; this request alone exceeds the limit"
        )
        return f"{self.window} limit of {self.limit} {what} reached ({self.used} used){when}"


def bucket_start(now: datetime, bucket_seconds: int) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % bucket_seconds, UTC)


def month_start(now: datetime) -> date:
    return date(now.year, now.month, 1)


def next_month(now: datetime) -> datetime:
    days = monthrange(now.year, now.month)[1]
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    return start + timedelta(days=days)


def oldest_bucket_needed(
    windows: Sequence[WindowSpec], now: datetime, bucket_seconds: int
) -> datetime:
    longest = max((w.seconds or 0 for w in windows if w.kind == "trailing"), default=0)
    return now - timedelta(seconds=longest + bucket_seconds)


def window_usage(
    spec: WindowSpec,
    buckets: Sequence[Bucket],
    month: Bucket | None,
    now: datetime,
    bucket_seconds: int,
) -> WindowUsage:
    usage = WindowUsage(spec)
    if spec.kind == "calendar-month":
        if month is not None:
            usage.used.add(month.used)
            usage.reserved.add(month.reserved)
        usage.resets_at = next_month(now)
        return usage
    length = timedelta(seconds=spec.seconds or 0)
    width = timedelta(seconds=bucket_seconds)
    for bucket in sorted(buckets, key=lambda b: b.start):
        leaves = bucket.start + width + length
        if leaves <= now:
            continue
        usage.used.add(bucket.used)
        usage.reserved.add(bucket.reserved)
        usage.leaving.append((leaves, bucket.counted))
    usage.resets_at = usage.leaving[0][0] if usage.leaving else None
    return usage


def check(usages: Sequence[WindowUsage], requested: Totals, now: datetime) -> Violation | None:
    """The binding violation if ``requested`` does not fit every window, else None."""
    violations: list[Violation] = []
    for usage in usages:
        counted = usage.counted
        for dimension in DIMENSIONS:
            limit = usage.spec.limit(dimension)
            if limit is None:
                continue
            used, want = counted.get(dimension), requested.get(dimension)
            if used + want <= limit:
                continue
            violations.append(
                Violation(
                    window=usage.spec.name,
                    dimension=dimension,
                    limit=limit,
                    used=used,
                    requested=want,
                    retry_after_s=_retry_after(usage, dimension, limit, want, now),
                )
            )
    if not violations:
        return None
    # the one that binds longest decides when to come back (None: never fits)
    return max(
        violations, key=lambda v: float("inf") if v.retry_after_s is None else v.retry_after_s
    )


def _retry_after(
    usage: WindowUsage, dimension: Dimension, limit: int, want: int, now: datetime
) -> int | None:
    if want > limit:
        return None
    if usage.spec.kind == "calendar-month":
        resets_at = usage.resets_at or next_month(now)
        return max(1, int((resets_at - now).total_seconds()) + 1)
    remaining = usage.counted.get(dimension)
    for leaves, counted in usage.leaving:
        remaining -= counted.get(dimension)
        if remaining + want <= limit:
            return max(1, int((leaves - now).total_seconds()) + 1)
    return None
