"""The provider interface: a request in, a stream of text and tool-call deltas and one final
usage out; and what each provider can take (:class:`Capabilities`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import JsonValue

from tollgate_core.contracts import (
    ChatMessage,
    ChatMessageV2,
    ResponseFormat,
    ToolChoice,
    ToolSpec,
    Usage,
    upgrade_message,
)
from tollgate_router.errors import InvalidProviderRequest


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    model: str
    messages: tuple[ChatMessageV2, ...]
    system: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    #: never ask a model for more output than this (what the meter reserved), whatever the
    #: catalog's default or maximum say
    max_tokens_cap: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    extras: dict[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # text-only messages (the v1 shape) are taken as they are
        if any(isinstance(m, ChatMessage) for m in self.messages):
            messages = tuple(
                upgrade_message(m) if isinstance(m, ChatMessage) else m for m in self.messages
            )
            object.__setattr__(self, "messages", messages)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolUseDelta:
    """A piece of the ``index``-th tool call of the answer: the first piece of a call carries
    ``id`` and ``name``, every piece more of its JSON ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def __post_init__(self) -> None:
        # built from a provider's JSON: a shape the API does not promise is malformed
        if not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"tool call index {self.index!r}")
        for value in (self.id, self.name):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"tool call id or name {value!r}")
        if not isinstance(self.arguments, str):
            raise TypeError("tool call arguments are not a string")


@dataclass(frozen=True, slots=True)
class Finished:
    usage: Usage
    stop_reason: str = "end_turn"
    metrics: dict[str, int] = field(default_factory=dict)


ProviderEvent = TextDelta | ToolUseDelta | Finished


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The request parameters a provider cannot take, by the name clients know them by
    (``tools``, ``response_format``, ``seed``, ``image_url``…): a request using one is refused
    with a validation error naming it, unless the model's catalog entry drops it."""

    unsupported: frozenset[str] = frozenset()


class Provider(Protocol):
    name: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        """Yield text and tool-call deltas, then exactly one :class:`Finished`."""
        ...


#: providers' own stop reasons, in the contract's words
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filtered",
    "guardrail_intervened": "content_filtered",
    "refusal": "content_filtered",
    "model_context_window_exceeded": "max_tokens",
    "pause_turn": "end_turn",
}
_CANONICAL = frozenset({"end_turn", "tool_use", "max_tokens", "stop_sequence", "content_filtered"})


def stop_reason(reason: str) -> str:
    """One of ``end_turn``, ``tool_use``, ``max_tokens``, ``stop_sequence``,
    ``content_filtered`` for any provider's stop or finish reason (unknown: ``end_turn``)."""
    if reason in _CANONICAL:
        return reason
    return _STOP_REASONS.get(reason, "end_turn")


def merge_extras(body: dict[str, Any], extras: Mapping[str, object], provider: str) -> None:
    """Provider-specific extras as top-level body fields; one that would replace a field
    Tollgate sets is refused, not merged."""
    clash = sorted(set(extras) & set(body))
    if clash:
        raise InvalidProviderRequest(
            f"extras may not set {', '.join(clash)}: use the request's own fields ({provider})",
            details={"param": "extras"},
        )
    body.update(extras)
