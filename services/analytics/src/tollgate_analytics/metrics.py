"""Prometheus metrics of tokens and latency by model, from the request log stream."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tollgate_core.contracts import RequestLogV1

REQUESTS = Counter(
    "tollgate_analytics_requests_total", "Requests by model and status", ["model", "status"]
)
TOKENS = Counter("tollgate_analytics_tokens_total", "Tokens by model", ["model", "direction"])
COST = Counter("tollgate_analytics_cost_usd_total", "Cost in USD by model", ["model"])
TTFT = Histogram(
    "tollgate_analytics_time_to_first_token_seconds",
    "Time to first token by model",
    ["model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
LATENCY = Histogram(
    "tollgate_analytics_latency_seconds",
    "Total latency by model",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


def observe(record: RequestLogV1) -> None:
    REQUESTS.labels(record.model, record.status).inc()
    TOKENS.labels(record.model, "input").inc(record.input_tokens)
    TOKENS.labels(record.model, "output").inc(record.output_tokens)
    COST.labels(record.model).inc(float(record.cost_usd))
    if record.time_to_first_token_ms is not None:
        TTFT.labels(record.model).observe(record.time_to_first_token_ms / 1000)
    LATENCY.labels(record.model).observe(record.latency_ms / 1000)
