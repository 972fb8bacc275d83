"""Pure admission logic: how much a request may cost before it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tollgate_core.bus.codec import encode
from tollgate_core.contracts import (
    AdmissionV1,
    ChatRequestV1,
    EmbeddingAdmissionV1,
    EmbeddingRequestV1,
    UsageRecordV1,
)
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


#: what the meter admits: a chat or an embeddings request
AnyRequest = ChatRequestV1 | EmbeddingRequestV1


def estimate(request: AnyRequest, *, default_max_tokens: int) -> Estimate:
    if isinstance(request, EmbeddingRequestV1):
        return estimate_embeddings(request)
    chars = sum(len(t) for t in request.system)
    chars += sum(len(b.text) for m in request.messages for b in m.content)
    overhead = MESSAGE_OVERHEAD_TOKENS * (len(request.messages) + len(request.system))
    input_tokens = math.ceil(chars / CHARS_PER_TOKEN) + overhead
    output_tokens = request.max_tokens if request.max_tokens is not None else default_max_tokens
    if input_tokens + output_tokens > INT32_MAX:
        raise RequestError("messages: the request is too large to meter")
    return Estimate(input_tokens, output_tokens)


def estimate_embeddings(request: EmbeddingRequestV1) -> Estimate:
    """Input tokens only, an embedding having no output: a token array is its own length,
    a text is counted at :data:`CHARS_PER_TOKEN` (no chat template around it)."""
    input_tokens = sum(
        len(i) if isinstance(i, tuple) else math.ceil(len(i) / CHARS_PER_TOKEN)
        for i in request.inputs
    )
    if input_tokens > INT32_MAX:
        raise RequestError("input: the request is too large to meter", details={"field": "input"})
    return Estimate(input_tokens, 0)


def admission_of(request: AnyRequest, est: Estimate) -> AdmissionV1 | EmbeddingAdmissionV1:
    if isinstance(request, EmbeddingRequestV1):
        return EmbeddingAdmissionV1(request=request, reserved_input_tokens=est.input_tokens)
    return AdmissionV1(
        request=request,
        reserved_input_tokens=est.input_tokens,
        reserved_output_tokens=est.output_tokens,
    )


#: longest text the meter stores for a principal, a model or a request id
MAX_TEXT_CHARS = 512


def validate_request(request: AnyRequest, limits: Limits) -> None:
    """Refuse, before the ledger, a request the ledger could not store or the router could
    not be handed: raises :class:`RequestError` naming the field."""
    check_text("request_id", request.request_id, max_chars=MAX_TEXT_CHARS)
    check_text("principal", request.principal, max_chars=MAX_TEXT_CHARS)
    check_text("model", request.model, max_chars=MAX_TEXT_CHARS)
    for group in request.groups:
        check_text("groups", group, max_chars=MAX_TEXT_CHARS)
    check_tokens("max_tokens", request.max_tokens, limit=limits.max_tokens)
    size = len(encode(admission_of(request, Estimate(0, 0))))
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
