"""Canned reports as DuckDB SQL over the ``logs`` and ``usage`` views. Each takes the
parameters ``since`` and ``until`` (UTC timestamps); the Athena versions are in ``aws/``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    title: str
    sql: str


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "usage-by-principal",
            "Tokens and cost by user and day",
            """
            SELECT CAST(finished_at AS DATE) AS day, principal, count(*) AS requests,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(input_tokens + output_tokens) AS total_tokens,
                   sum(cost_usd) AS cost_usd
            FROM logs WHERE finished_at >= $since AND finished_at < $until
            GROUP BY ALL ORDER BY day, total_tokens DESC, principal
            """,
        ),
        Report(
            "usage-by-group",
            "Tokens and cost by group and day",
            """
            SELECT CAST(finished_at AS DATE) AS day, grp AS "group", count(*) AS requests,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(input_tokens + output_tokens) AS total_tokens, sum(cost_usd) AS cost_usd
            FROM (SELECT *, unnest(CASE WHEN len(groups) = 0 THEN ['(none)'] ELSE groups END)
                  AS grp FROM logs WHERE finished_at >= $since AND finished_at < $until)
            GROUP BY ALL ORDER BY day, total_tokens DESC, "group"
            """,
        ),
        Report(
            "usage-by-day",
            "Tokens and cost by day",
            """
            SELECT CAST(finished_at AS DATE) AS day, count(*) AS requests,
                   count(DISTINCT principal) AS users,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(cost_usd) AS cost_usd
            FROM logs WHERE finished_at >= $since AND finished_at < $until GROUP BY ALL ORDER BY day
            """,
        ),
        Report(
            "usage-by-model",
            "Tokens and cost by model",
            """
            SELECT model, count(*) AS requests,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(input_tokens + output_tokens) AS total_tokens, sum(cost_usd) AS cost_usd
            FROM logs WHERE finished_at >= $since AND finished_at < $until
            GROUP BY ALL ORDER BY total_tokens DESC, model
            """,
        ),
        Report(
            "latency-by-model",
            "Time to first token and total latency percentiles by model (ms)",
            """
            SELECT model, count(*) AS requests,
                   round(quantile_cont(time_to_first_token_ms, 0.5), 1) AS ttft_p50,
                   round(quantile_cont(time_to_first_token_ms, 0.95), 1) AS ttft_p95,
                   round(quantile_cont(time_to_first_token_ms, 0.99), 1) AS ttft_p99,
                   round(quantile_cont(latency_ms, 0.5), 1) AS latency_p50,
                   round(quantile_cont(latency_ms, 0.95), 1) AS latency_p95,
                   round(quantile_cont(latency_ms, 0.99), 1) AS latency_p99
            FROM logs WHERE finished_at >= $since AND finished_at < $until AND status = 'ok'
            GROUP BY ALL ORDER BY model
            """,
        ),
        Report(
            "error-rates",
            "Errors by model and type",
            """
            SELECT model, coalesce(error_type, status) AS error_type, count(*) AS errors,
                   round(count(*) / any_value(total), 4) AS rate
            FROM (SELECT *, count(*) OVER (PARTITION BY model) AS total FROM logs
                  WHERE finished_at >= $since AND finished_at < $until)
            WHERE status <> 'ok' GROUP BY ALL ORDER BY model, errors DESC
            """,
        ),
        Report(
            "cache-savings",
            "Cache hits and the tokens and cost they saved, by model",
            """
            WITH per_model AS (
              SELECT model,
                     count(*) FILTER (WHERE cache_hit) AS cache_hits,
                     count(*) AS requests,
                     sum(input_tokens + output_tokens) FILTER (WHERE cache_hit) AS tokens_saved,
                     sum(cost_usd) FILTER (WHERE NOT cache_hit) AS paid_usd,
                     sum(input_tokens + output_tokens) FILTER (WHERE NOT cache_hit) AS paid_tokens
              FROM logs WHERE finished_at >= $since AND finished_at < $until GROUP BY model)
            SELECT model, requests, cache_hits,
                   round(cache_hits / requests, 4) AS hit_rate,
                   coalesce(tokens_saved, 0) AS tokens_saved,
                   round(coalesce(tokens_saved * paid_usd / nullif(paid_tokens, 0), 0), 6)
                     AS cost_saved_usd
            FROM per_model ORDER BY cache_hits DESC, model
            """,
        ),
    )
}

#: ``report today`` shows these, in this order
TODAY = ("usage-by-principal", "usage-by-model", "latency-by-model")


def window(day: str | None, days: int = 1) -> dict[str, datetime]:
    """``since``/``until`` for ``days`` days ending with ``day`` (default today, UTC)."""
    end_day = datetime.fromisoformat(day).date() if day else datetime.now(UTC).date()
    until = datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC) + timedelta(days=1)
    return {"since": until - timedelta(days=days), "until": until}
