"""Fitting a request to a provider: what it uses that the provider cannot take is refused with
a validation error naming the parameter, or dropped where the model's catalog entry says so
(``drop_params``, as LiteLLM's option of that name) — never silently ignored."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from tollgate_core.contracts import ImageContent, ToolResultContent, ToolUseContent
from tollgate_router.errors import InvalidProviderRequest
from tollgate_router.providers.base import Capabilities, Provider, ProviderRequest

#: parameters a catalog entry may drop, and what a dropped one becomes
DROPPABLE: dict[str, dict[str, object]] = {
    "temperature": {"temperature": None},
    "top_p": {"top_p": None},
    "seed": {"seed": None},
    "stop": {"stop": ()},
    "response_format": {"response_format": None},
    "tool_choice": {"tool_choice": None},
    "tool_choice.none": {"tool_choice": None},
    "extras": {"extras": {}},
}


def capabilities_of(provider: Provider) -> Capabilities:
    found = getattr(provider, "capabilities", None)
    return found if isinstance(found, Capabilities) else Capabilities()


def used_params(request: ProviderRequest) -> list[str]:
    """The parameters ``request`` uses that some provider may not take."""
    used: list[str] = []
    if request.tools or _has_blocks(request, (ToolUseContent, ToolResultContent)):
        used.append("tools")
    if request.tool_choice is not None:
        used.append("tool_choice.none" if request.tool_choice.mode == "none" else "tool_choice")
    if request.response_format is not None and request.response_format.type != "text":
        used.append("response_format")
    for name in ("temperature", "top_p", "seed"):
        if getattr(request, name) is not None:
            used.append(name)
    if request.stop:
        used.append("stop")
    if request.extras:
        used.append("extras")
    images = [b for m in request.messages for b in m.content if isinstance(b, ImageContent)]
    if images:
        used.append("image")
    if any(b.url is not None for b in images):
        used.append("image_url")
    return used


def fit(
    request: ProviderRequest, provider: Provider, *, model: str, drop: Iterable[str] = ()
) -> ProviderRequest:
    """``request`` as ``provider`` can take it, or :class:`InvalidProviderRequest`."""
    unsupported = capabilities_of(provider).unsupported
    droppable = set(drop)
    changes: dict[str, object] = {}
    for param in used_params(request):
        if param not in unsupported:
            continue
        base = param.split(".", 1)[0]
        if param in DROPPABLE and base in droppable:
            changes.update(DROPPABLE[param])
            continue
        raise InvalidProviderRequest(
            f"{_describe(param)} is not supported by model {model!r} (provider {provider.name})",
            details={"param": base},
        )
    return dataclasses.replace(request, **changes) if changes else request  # type: ignore[arg-type]


def _describe(param: str) -> str:
    return {
        "tool_choice.none": "tool_choice 'none'",
        "image_url": "an image by URL (send it inline, base64)",
        "image": "image input",
        "extras": "provider-specific extras",
    }.get(param, param)


def _has_blocks(request: ProviderRequest, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(b, kinds) for m in request.messages for b in m.content)
