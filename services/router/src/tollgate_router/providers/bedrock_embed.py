"""Bedrock embedding models over InvokeModel, each in its own JSON body format.

- Amazon Titan Text Embeddings (``amazon.titan-embed-text-v2:0``, ``…-v1``): one text a call,
  ``{"inputText", "dimensions", "normalize"}`` → ``{"embedding", "inputTextTokenCount"}``; v2
  gives 256, 512 or 1024 values (default 1024), v1 a fixed 1536. Several inputs are several
  calls, a few at a time.
- Cohere Embed (``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3``,
  ``cohere.embed-v4:0``): up to 96 texts a call, ``{"texts", "input_type", "embedding_types"}``
  → ``{"embeddings": [[…]]}`` or, by type, ``{"embeddings": {"float": [[…]]}}``; only v4
  takes ``output_dimension`` (256, 512, 1024, 1536). Its body has no token count: Bedrock's
  ``x-amzn-bedrock-input-token-count`` response header carries it, as for every model.

The format is chosen from the model id (a cross-region inference profile's prefix such as
``us.`` does not matter). What a model cannot take is refused as a ``validation_error`` naming
the parameter, before any call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tollgate_router.errors import InvalidProviderRequest, ProviderUnavailable
from tollgate_router.providers.base import EmbeddingCall, Embeddings

Invoke = Callable[[str, dict[str, Any]], Awaitable[tuple[Any, int | None]]]

TITAN_V2_DIMENSIONS = (256, 512, 1024)
COHERE_V4_DIMENSIONS = (256, 512, 1024, 1536)
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
COHERE_BATCH = 96
#: Titan calls in flight at once for one request
TITAN_CONCURRENCY = 8


def _refuse(param: str, message: str) -> InvalidProviderRequest:
    return InvalidProviderRequest(f"bedrock: {message}", details={"param": param})


def _texts(call: EmbeddingCall) -> list[str]:
    texts = [i for i in call.inputs if isinstance(i, str)]
    if len(texts) != len(call.inputs):
        raise _refuse("input", f"{call.model} takes text inputs only, not token arrays")
    return texts


async def embed_bedrock(invoke: Invoke, call: EmbeddingCall) -> Embeddings:
    model = call.model.lower()
    if "titan-embed" in model:
        return await _titan(invoke, call)
    if "cohere.embed" in model:
        return await _cohere(invoke, call)
    raise _refuse("model", f"{call.model} is not a Bedrock embedding model Tollgate knows")


async def _titan(invoke: Invoke, call: EmbeddingCall) -> Embeddings:
    texts = _texts(call)
    body: dict[str, Any] = {}
    if call.dimensions is not None:
        if "v2" not in call.model or call.dimensions not in TITAN_V2_DIMENSIONS:
            allowed = TITAN_V2_DIMENSIONS if "v2" in call.model else "none"
            raise _refuse("dimensions", f"{call.model} gives dimensions {allowed}")
        body = {"dimensions": call.dimensions, "normalize": True}
    gate = asyncio.Semaphore(TITAN_CONCURRENCY)

    async def one(text: str) -> tuple[tuple[float, ...], int | None]:
        async with gate:
            data, header = await invoke(call.model, {"inputText": text, **body})
        tokens = data.get("inputTextTokenCount", header)
        return tuple(float(x) for x in data["embedding"]), None if tokens is None else int(tokens)

    results = await asyncio.gather(*(one(t) for t in texts))
    counts = [tokens for _, tokens in results]
    total = None if None in counts else sum(c for c in counts if c is not None)
    return Embeddings(tuple(v for v, _ in results), total)


async def _cohere(invoke: Invoke, call: EmbeddingCall) -> Embeddings:
    texts = _texts(call)
    body: dict[str, Any] = {
        "input_type": call.input_type or "search_document",
        "embedding_types": ["float"],
    }
    if body["input_type"] not in COHERE_INPUT_TYPES:
        raise _refuse("input_type", f"input_type must be one of {COHERE_INPUT_TYPES}")
    if call.dimensions is not None:
        if "embed-v4" not in call.model or call.dimensions not in COHERE_V4_DIMENSIONS:
            allowed = COHERE_V4_DIMENSIONS if "embed-v4" in call.model else "none"
            raise _refuse("dimensions", f"{call.model} gives dimensions {allowed}")
        body["output_dimension"] = call.dimensions
    vectors: list[tuple[float, ...]] = []
    total: int | None = 0
    for start in range(0, len(texts), COHERE_BATCH):
        batch = texts[start : start + COHERE_BATCH]
        data, tokens = await invoke(call.model, {"texts": batch, **body})
        vectors += _cohere_vectors(data, len(batch))
        total = None if total is None or tokens is None else total + tokens
    return Embeddings(tuple(vectors), total)


def _cohere_vectors(data: Any, count: int) -> list[tuple[float, ...]]:
    embeddings = data["embeddings"]
    if isinstance(embeddings, dict):  # asked by type
        embeddings = embeddings["float"]
    if len(embeddings) != count:
        raise ProviderUnavailable(f"bedrock: {len(embeddings)} embeddings for {count} texts")
    return [tuple(float(x) for x in e) for e in embeddings]
