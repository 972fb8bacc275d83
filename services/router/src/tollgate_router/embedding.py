"""Embeddings requests in the router: what is checked before a provider is called, how the
inputs are counted when a provider reports no usage, and how vectors are packed into reply
records.

An embedding model is called once (with the retry policy and circuit breaker of its provider)
and never falls back: another model's vectors live in another space, so a caller indexing
them would silently mix the two.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator, Sequence

from tollgate_core.contracts import EmbeddingRequestV1
from tollgate_core.limits import DEFAULT_MAX_RECORD_BYTES
from tollgate_router.catalog import ModelSpec
from tollgate_router.errors import InvalidProviderRequest, ProviderError
from tollgate_router.providers.base import EmbeddingCall
from tollgate_router.tokens import TokenCounter

#: vectors are packed into reply records up to this many bytes of base64: half the default
#: record limit, room enough for the envelope; one vector of any current model (at most a few
#: thousand float32 values, tens of KB) always fits
CHUNK_BYTES = DEFAULT_MAX_RECORD_BYTES // 2


def check(spec: ModelSpec, request: EmbeddingRequestV1) -> ProviderError | None:
    """Why ``spec`` cannot serve ``request``, before any provider call (None: it can)."""
    if spec.kind != "embedding":
        return InvalidProviderRequest(
            f"model {spec.id!r} is a chat model: use /v1/chat/completions",
            details={"param": "model"},
        )
    if (
        request.dimensions is not None
        and spec.dimensions is not None
        and request.dimensions not in spec.dimensions
    ):
        return InvalidProviderRequest(
            f"model {spec.id!r} gives dimensions {list(spec.dimensions)}",
            details={"param": "dimensions"},
        )
    return None


def call_of(spec: ModelSpec, request: EmbeddingRequestV1) -> EmbeddingCall:
    return EmbeddingCall(
        model=spec.upstream_id,
        inputs=request.inputs,
        dimensions=request.dimensions,
        input_type=request.input_type,
    )


def count_inputs(counter: TokenCounter, inputs: Sequence[str | tuple[int, ...]]) -> int:
    """Input tokens of inputs whose provider reported none: a token array is its length."""
    return sum(len(i) if isinstance(i, tuple) else counter.count(i) for i in inputs)


def encode_vector(vector: Sequence[float]) -> str:
    """Base64 of little-endian float32: the OpenAI API's ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def pack(
    vectors: Sequence[Sequence[float]], max_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, tuple[str, ...]]]:
    """``(first_index, encoded vectors)`` chunks, each under ``max_bytes`` (at least one
    vector a chunk), in input order."""
    first, batch, size = 0, list[str](), 0
    for index, vector in enumerate(vectors):
        encoded = encode_vector(vector)
        if batch and size + len(encoded) > max_bytes:
            yield first, tuple(batch)
            first, batch, size = index, [], 0
        batch.append(encoded)
        size += len(encoded) + 3  # quotes and comma in the JSON record
    if batch:
        yield first, tuple(batch)
