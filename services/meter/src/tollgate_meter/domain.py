"""Pure admission logic: how much a request may cost before it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tollgate_core.bus.codec import encode
from tollgate_core.contracts import AdmissionV1, ChatRequestV1, UsageRecordV1
from tollgate_core.errors import RequestError
from tollgate_core.limits import INT32_MAX, Limits, check_text, check_tokens

#: A deliberately generous characters-per-token ratio: estimates should err high, since the
#: reservation is replaced by the provider's real count at settlement.
CHARS_PER_TOKEN = 3.0
MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class OutputLimit:
    """What the router lets one model write: ``default`` for a request that names no
    ``max_tokens``, never more than ``maximum`` (its catalog's ``default_max_tokens`` and
    ``max_max_tokens``)."""

    default: int
    maximum: int

    def allowed(self, requested: int | None) -> int:
        """The output the router will allow: the same rule as the router's catalog."""
        return min(requested or self.default, self.maximum)


def estimate(
    request: ChatRequestV1, *, default_max_tokens: int, output_limit: OutputLimit | None = None
) -> Estimate:
    """Input tokens (erring high) plus the output the router will allow the request: its
    model's ``output_limit`` when the catalog is known, else ``max_tokens`` or the meter's
    ``default_max_tokens``."""
    chars = sum(len(t) for t in request.system)
    chars += sum(len(b.text) for m in request.messages for b in m.content)
    overhead = MESSAGE_OVERHEAD_TOKENS * (len(request.messages) + len(request.system))
    input_tokens = math.ceil(chars / CHARS_PER_TOKEN) + overhead
    if output_limit is not None:
        output_tokens = output_limit.allowed(request.max_tokens)
    elif request.max_tokens is not None:
        output_tokens = request.max_tokens
    else:
        output_tokens = default_max_tokens
    if input_tokens + output_tokens > INT32_MAX:
        raise RequestError("messages: the request is too large to meter")
    return Estimate(input_tokens, output_tokens)


#: longest text the meter stores for a principal, a model or a request id
MAX_TEXT_CHARS = 512


def validate_request(request: ChatRequestV1, limits: Limits) -> None:
    """Refuse, before the ledger, a request the ledger could not store or the router could
    not be handed: raises :class:`RequestError` naming the field."""
    check_text("request_id", request.request_id, max_chars=MAX_TEXT_CHARS)
    check_text("principal", request.principal, max_chars=MAX_TEXT_CHARS)
    check_text("model", request.model, max_chars=MAX_TEXT_CHARS)
    for group in request.groups:
        check_text("groups", group, max_chars=MAX_TEXT_CHARS)
    check_tokens("max_tokens", request.max_tokens, limit=limits.max_tokens)
    admission = AdmissionV1(request=request, reserved_input_tokens=0, reserved_output_tokens=0)
    size = len(encode(admission))
    if size > limits.max_record_bytes:
        raise RequestError(
            f"messages: the request is too large ({size} bytes encoded, at most"
            f" {limits.max_record_bytes})",
            details={"field": "messages"},
        )


def validate_usage(usage: UsageRecordV1) -> None:
    """Refuse a usage record the ledger could not store (it is dead-lettered, not retried)."""
    check_text("request_id", usage.request_id, max_chars=MAX_TEXT_CHARS)
    check_text("principal", usage.principal, max_chars=MAX_TEXT_CHARS)
    check_text("model", usage.model, max_chars=MAX_TEXT_CHARS)
    check_text("provider", usage.provider, max_chars=MAX_TEXT_CHARS)
    check_tokens("usage.input_tokens", usage.usage.input_tokens, limit=INT32_MAX)
    check_tokens("usage.output_tokens", usage.usage.output_tokens, limit=INT32_MAX)
