"""Prometheus metrics of tokens and latency by model, from the request log stream (the AWS
design's CloudWatch metrics). Each record is observed once per worker: a record redelivered
after a restart whose aggregates already counted it is not observed again."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tollgate_core.contracts import RequestLogV1
from tollgate_core.telemetry import REQUEST_LATENCY_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS

REQUESTS = Counter(
    "tollgate_analytics_requests_total", "Requests by model and status", ["model", "status"]
)
TOKENS = Counter("tollgate_analytics_tokens_total", "Tokens by model", ["model", "direction"])
CACHE_HITS = Counter(
    "tollgate_analytics_cache_hits_total", "Requests answered from the prepared cache", ["model"]
)
ERRORS = Counter(
    "tollgate_analytics_errors_total", "Failed requests by model and error type", ["model", "type"]
)
COST = Counter("tollgate_analytics_cost_usd_total", "Cost in USD by model", ["model"])
TTFT = Histogram(
    "tollgate_analytics_time_to_first_token_seconds",
    "Time to first token by model",
    ["model"],
    buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
)
LATENCY = Histogram(
    "tollgate_analytics_latency_seconds",
    "Total latency by model",
    ["model"],
    buckets=REQUEST_LATENCY_BUCKETS,
)


def observe(record: RequestLogV1) -> None:
    REQUESTS.labels(record.model, record.status).inc()
    TOKENS.labels(record.model, "input").inc(record.input_tokens)
    TOKENS.labels(record.model, "output").inc(record.output_tokens)
    COST.labels(record.model).inc(float(record.cost_usd))
    if record.cache_hit:
        CACHE_HITS.labels(record.model).inc()
    if record.status != "ok":
        ERRORS.labels(record.model, record.error_type or record.status).inc()
    if record.time_to_first_token_ms is not None:
        TTFT.labels(record.model).observe(record.time_to_first_token_ms / 1000)
    LATENCY.labels(record.model).observe(record.latency_ms / 1000)
