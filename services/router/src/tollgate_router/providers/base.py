"""The provider interface: a request in, a stream of text deltas and one final usage out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tollgate_core.contracts import ChatMessage, Usage


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    system: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    #: never ask a model for more output than this (what the meter reserved), whatever the
    #: catalog's default or maximum say
    max_tokens_cap: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    usage: Usage
    stop_reason: str = "end_turn"
    metrics: dict[str, int] = field(default_factory=dict)
    #: False when the provider reported no usage (``usage`` is then empty): the router
    #: counts the tokens itself and marks its records as estimated
    reported: bool = True


ProviderEvent = TextDelta | Finished


class Provider(Protocol):
    name: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        """Yield text deltas, then exactly one :class:`Finished`."""
        ...


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    """One embeddings request as a provider receives it."""

    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None
    input_type: str | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors, in input order, and the input tokens the provider reported (None: it
    reported none, and the router counts them)."""

    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int | None


@runtime_checkable
class Embedder(Protocol):
    name: str

    async def embed(self, call: EmbeddingCall) -> Embeddings:
        """The vectors of ``call.inputs``; raises a ProviderError like :meth:`Provider.stream`."""
        ...
