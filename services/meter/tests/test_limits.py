"""Window arithmetic at bucket and month boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tollgate_meter.limits import (
    Bucket,
    TierConfig,
    TierSpec,
    Totals,
    WindowSpec,
    bucket_start,
    check,
    next_month,
    window_usage,
)

B = 600  # 10-minute buckets
DAILY = WindowSpec(name="daily", kind="trailing", seconds=86_400, input=1_000, output=2_000)
TEN = WindowSpec(name="rolling-10m", kind="trailing", seconds=600, total=500, requests=3)
MONTH = WindowSpec(name="monthly", kind="calendar-month", input=10_000)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def bucket(start: str, inp: int = 0, out: int = 0, req: int = 0, r_in: int = 0) -> Bucket:
    return Bucket(at(start), Totals(inp, out, req), Totals(r_in, 0, 0))


def test_buckets_are_aligned_to_their_width() -> None:
    assert bucket_start(at("2026-11-22T10:09:59"), B) == at("2026-11-22T10:00:00")
    assert bucket_start(at("2026-11-22T10:10:00"), B) == at("2026-11-22T10:10:00")


def test_a_trailing_window_counts_every_bucket_that_overlaps_it() -> None:
    buckets = [
        bucket("2026-11-21T10:00:00", inp=100),
        bucket("2026-11-21T10:10:00", inp=10),
        bucket("2026-11-22T09:50:00", inp=1, r_in=5),
    ]
    # 10:05 the next day: the 10:00 bucket ended at 10:10 yesterday, which is within 24 h
    usage = window_usage(DAILY, buckets, None, at("2026-11-22T10:05:00"), B)
    assert (usage.used.input, usage.reserved.input) == (111, 5)
    assert usage.resets_at == at("2026-11-22T10:10:00")
    # exactly when that bucket's end is 24 h ago, it leaves the window
    usage = window_usage(DAILY, buckets, None, at("2026-11-22T10:10:00"), B)
    assert usage.used.input == 11


def test_the_rolling_window_spans_the_previous_bucket_until_it_is_ten_minutes_old() -> None:
    buckets = [bucket("2026-11-22T10:00:00", inp=100, req=1), bucket("2026-11-22T10:10:00", inp=7)]
    assert window_usage(TEN, buckets, None, at("2026-11-22T10:19:59"), B).used.input == 107
    assert window_usage(TEN, buckets, None, at("2026-11-22T10:20:00"), B).used.input == 7


def test_calendar_month_resets_on_the_first() -> None:
    assert next_month(at("2026-12-31T23:59:59")) == at("2027-01-01T00:00:00")
    assert next_month(at("2027-02-10T00:00:00")) == at("2027-03-01T00:00:00")
    month = bucket("2026-11-01T00:00:00", inp=9_990)
    usage = window_usage(MONTH, [], month, at("2026-11-30T23:59:00"), B)
    violation = check([usage], Totals(20, 0, 1), at("2026-11-30T23:59:00"))
    assert violation is not None and violation.window == "monthly"
    assert violation.retry_after_s == 61  # one second after midnight, the new month


def test_check_names_the_binding_window_limit_and_when_to_retry() -> None:
    now = at("2026-11-22T12:00:00")
    buckets = [bucket("2026-11-21T12:30:00", inp=600), bucket("2026-11-22T11:50:00", inp=300)]
    usages = [window_usage(w, buckets, None, now, B) for w in (TEN, DAILY)]
    assert check(usages, Totals(100, 100, 1), now) is None
    violation = check(usages, Totals(200, 100, 1), now)
    assert violation is not None
    assert (violation.window, violation.dimension, violation.limit, violation.used) == (
        "daily",
        "input",
        1_000,
        900,
    )
    # the 600 tokens of 12:30 yesterday leave the window at 12:40 today
    assert violation.retry_after_s == 40 * 60 + 1
    assert "daily limit of 1000 input tokens" in violation.message()


def test_a_request_larger_than_the_limit_can_never_fit() -> None:
    now = at("2026-11-22T12:00:00")
    violation = check([window_usage(DAILY, [], None, now, B)], Totals(5_000, 0, 1), now)
    assert violation is not None and violation.retry_after_s is None


def test_requests_and_total_limits() -> None:
    now = at("2026-11-22T12:05:00")
    buckets = [bucket("2026-11-22T12:00:00", inp=10, out=10, req=3)]
    violation = check([window_usage(TEN, buckets, None, now, B)], Totals(1, 1, 1), now)
    assert violation is not None and violation.dimension == "requests"


def test_tiers_by_group_rank_principal_override_and_admin_set_tiers() -> None:
    config = TierConfig()
    assert config.tier_for([], {}, None)[0] == "standard"
    assert config.tier_for(["premium", "admin"], {}, None)[0] == "admin"
    assert config.tier_for(["premium"], {}, "standard")[0] == "standard"
    gold = TierSpec(windows=(DAILY,), rank=5)
    assert config.tier_for([], {"gold": gold}, "gold") == ("gold", gold)
    with pytest.raises(ValueError, match="unknown tiers"):
        TierConfig(default_tier="nope")


def test_window_specs_are_validated() -> None:
    with pytest.raises(ValueError):
        WindowSpec(name="x", kind="trailing")
    with pytest.raises(ValueError):
        WindowSpec(name="x", kind="calendar-month", seconds=60)
    assert timedelta(seconds=DAILY.seconds or 0) == timedelta(days=1)
