"""Pure admission logic: how much a request may cost before it runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

from tollgate_core.bus.codec import encode
from tollgate_core.contracts import (
    AdmissionV1,
    AdmissionV2,
    AnyRequest,
    ChatRequestV2,
    EmbeddingAdmissionV1,
    EmbeddingRequestV1,
    ImageContent,
    TextContent,
    ToolResultContent,
    ToolUseContent,
    UsageRecordV1,
)
from tollgate_core.errors import RequestError
from tollgate_core.limits import INT32_MAX, Limits, check_text, check_tokens

#: A deliberately generous characters-per-token ratio: estimates should err high, since the
#: reservation is replaced by the provider's real count at settlement.
CHARS_PER_TOKEN = 3.0
MESSAGE_OVERHEAD_TOKENS = 4
#: an image, whatever its size: providers count up to about 1 600 tokens for one
#: (Anthropic: width x height / 750, images scaled to at most 1.15 megapixels; OpenAI's
#: high detail: 85 + 170 per 512-px tile, ~1 100 for 1024 x 1024)
IMAGE_TOKENS = 1600
#: what a tool definition costs beyond its JSON (providers wrap tools in a system prompt)
TOOL_OVERHEAD_TOKENS = 16


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
    request: AnyRequest,
    *,
    default_max_tokens: int,
    output_limit: OutputLimit | None = None,
) -> Estimate:
    """Input: text, tool definitions, tool calls and results by characters, each image as
    :data:`IMAGE_TOKENS`; output: what the router will allow the request — its model's
    ``output_limit`` when the catalog is known, else ``max_tokens`` or the meter's
    ``default_max_tokens``."""
    if isinstance(request, EmbeddingRequestV1):
        return estimate_embeddings(request)
    request = ChatRequestV2.of(request)
    chars = sum(len(t) for t in request.system)
    images = 0
    for block in (b for m in request.messages for b in m.content):
        if isinstance(block, TextContent):
            chars += len(block.text)
        elif isinstance(block, ToolUseContent):
            chars += len(block.id) + len(block.name) + len(_json(block.input))
        elif isinstance(block, ToolResultContent):
            chars += len(block.tool_use_id) + len(block.content)
        elif isinstance(block, ImageContent):
            images += 1
    chars += sum(len(_json(t.model_dump())) for t in request.tools)
    if request.response_format is not None and request.response_format.json_schema:
        chars += len(_json(request.response_format.json_schema))
    overhead = MESSAGE_OVERHEAD_TOKENS * (len(request.messages) + len(request.system))
    overhead += TOOL_OVERHEAD_TOKENS * len(request.tools) + IMAGE_TOKENS * images
    input_tokens = math.ceil(chars / CHARS_PER_TOKEN) + overhead
    output_tokens = _output_tokens(request.max_tokens, default_max_tokens, output_limit)
    if input_tokens + output_tokens > INT32_MAX:
        raise RequestError("messages: the request is too large to meter")
    return Estimate(input_tokens, output_tokens)


def _output_tokens(requested: int | None, default: int, limit: OutputLimit | None) -> int:
    if limit is not None:
        return limit.allowed(requested)
    return requested if requested is not None else default


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


#: longest text the meter stores for a principal, a model or a request id
MAX_TEXT_CHARS = 512


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def validate_request(request: AnyRequest, limits: Limits) -> None:
    """Refuse, before the ledger, a request the ledger could not store or the router could
    not be handed: raises :class:`RequestError` naming the field."""
    check_text("request_id", request.request_id, max_chars=MAX_TEXT_CHARS)
    check_text("principal", request.principal, max_chars=MAX_TEXT_CHARS)
    check_text("model", request.model, max_chars=MAX_TEXT_CHARS)
    for group in request.groups:
        check_text("groups", group, max_chars=MAX_TEXT_CHARS)
    check_tokens("max_tokens", request.max_tokens, limit=limits.max_tokens)
    # the largest this admission can be: every count at its widest, an expiry set
    admission = admission_of(request, INT32_MAX, INT32_MAX, expires_at=request.created_at)
    size = len(encode(admission))
    if size > limits.max_record_bytes:
        raise RequestError(
            f"messages: the request is too large ({size} bytes encoded, at most"
            f" {limits.max_record_bytes})",
            details={"field": "messages"},
        )


def admission_of(
    request: AnyRequest,
    reserved_in: int,
    reserved_out: int,
    *,
    expires_at: datetime | None = None,
) -> AdmissionV1 | AdmissionV2 | EmbeddingAdmissionV1:
    """The admission, in the request's own version: a router of the previous release still
    takes a v1 request's. ``expires_at``: when the reservation may be released at the
    earliest (None: nothing was reserved). An embeddings request reserves no output."""
    if isinstance(request, EmbeddingRequestV1):
        return EmbeddingAdmissionV1(request=request, reserved_input_tokens=reserved_in)
    if isinstance(request, ChatRequestV2):
        return AdmissionV2(
            request=request,
            reserved_input_tokens=reserved_in,
            reserved_output_tokens=reserved_out,
            reservation_expires_at=expires_at,
        )
    return AdmissionV1(
        request=request,
        reserved_input_tokens=reserved_in,
        reserved_output_tokens=reserved_out,
        reservation_expires_at=expires_at,
    )


def validate_usage(usage: UsageRecordV1) -> None:
    """Refuse a usage record the ledger could not store (it is dead-lettered, not retried)."""
    check_text("request_id", usage.request_id, max_chars=MAX_TEXT_CHARS)
    check_text("principal", usage.principal, max_chars=MAX_TEXT_CHARS)
    check_text("model", usage.model, max_chars=MAX_TEXT_CHARS)
    check_text("provider", usage.provider, max_chars=MAX_TEXT_CHARS)
    check_tokens("usage.input_tokens", usage.usage.input_tokens, limit=INT32_MAX)
    check_tokens("usage.output_tokens", usage.usage.output_tokens, limit=INT32_MAX)
