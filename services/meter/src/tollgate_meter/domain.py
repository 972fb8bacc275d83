"""Pure admission logic: how much a request may cost before it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tollgate_core.contracts import ChatRequestV1

#: A deliberately generous characters-per-token ratio: estimates should err high, since the
#: reservation is replaced by the provider's real count at settlement.
CHARS_PER_TOKEN = 3.0
MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int


def estimate(request: ChatRequestV1, *, default_max_tokens: int) -> Estimate:
    chars = sum(len(t) for t in request.system)
    chars += sum(len(b.text) for m in request.messages for b in m.content)
    overhead = MESSAGE_OVERHEAD_TOKENS * (len(request.messages) + len(request.system))
    input_tokens = math.ceil(chars / CHARS_PER_TOKEN) + overhead
    output_tokens = request.max_tokens if request.max_tokens is not None else default_max_tokens
    return Estimate(input_tokens, output_tokens)
