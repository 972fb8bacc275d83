"""The OpenTelemetry GenAI semantic conventions, as the router reports them: the
``gen_ai.system`` of each provider type, and the GenAI client metrics in Prometheus form
(``gen_ai.client.token.usage``, ``gen_ai.server.time_to_first_token``,
``gen_ai.client.operation.duration``), kept beside Tollgate's own ``tollgate_router_*``."""

from __future__ import annotations

from prometheus_client import Histogram

from tollgate_core.contracts import Usage
from tollgate_core.telemetry import REQUEST_LATENCY_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS

#: provider types (tollgate_router.providers) as the conventions name them
SYSTEMS = {"bedrock": "aws.bedrock", "openai": "openai", "anthropic": "anthropic"}
OPERATION = "chat"
#: powers of four, as the conventions advise for token counts
TOKEN_BUCKETS = tuple(float(4**n) for n in range(12))

_LABELS = ["gen_ai_operation_name", "gen_ai_system", "gen_ai_request_model"]
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request (gen_ai.client.token.usage)",
    [*_LABELS, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time to the first token (gen_ai.server.time_to_first_token)",
    _LABELS,
    buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
)
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Whole request duration (gen_ai.client.operation.duration)",
    [*_LABELS, "error_type"],
    buckets=REQUEST_LATENCY_BUCKETS,
)


def system_of(provider: str) -> str:
    """``gen_ai.system`` for a provider type (``tollgate.<type>`` for Tollgate's own)."""
    return SYSTEMS.get(provider, f"tollgate.{provider}")


def observe_first_token(provider: str, model: str, seconds: float) -> None:
    TIME_TO_FIRST_TOKEN.labels(OPERATION, system_of(provider), model).observe(seconds)


def observe_request(
    provider: str, model: str, usage: Usage, seconds: float, error_type: str | None
) -> None:
    """One model call's tokens and duration; nothing for answers no provider produced (the
    prepared-response cache, refusals before any call)."""
    if provider in ("cache", "none"):
        return
    system = system_of(provider)
    TOKEN_USAGE.labels(OPERATION, system, model, "input").observe(usage.input_tokens)
    TOKEN_USAGE.labels(OPERATION, system, model, "output").observe(usage.output_tokens)
    OPERATION_DURATION.labels(OPERATION, system, model, error_type or "").observe(seconds)
