"""Fuzzed content blocks and tool definitions never crash a provider adapter: every request
the contract admits is either mapped to a JSON body or refused with a validation error, and
streamed tool-call events of any shape end in the adapter's typed errors, never a crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate_core.contracts import (
    ChatMessageV2,
    ImageContent,
    ResponseFormat,
    TextContent,
    ToolChoice,
    ToolResultContent,
    ToolSpec,
    ToolUseContent,
)
from tollgate_router.errors import InvalidProviderRequest
from tollgate_router.providers.anthropic import AnthropicProvider, _ToolBlocks
from tollgate_router.providers.base import Provider, ProviderRequest, ToolUseDelta
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.bedrock import _ToolBlocks as BedrockToolBlocks
from tollgate_router.providers.local import LocalProvider
from tollgate_router.providers.openai import OpenAIProvider, tool_deltas
from tollgate_router.providers.params import fit

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
ids = st.text(min_size=1, max_size=30)

blocks = st.one_of(
    st.builds(TextContent, text=text),
    st.builds(
        ImageContent,
        media_type=st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
        data=st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=40),
    ),
    st.builds(ImageContent, url=st.text(min_size=1, max_size=60)),
    st.builds(ToolUseContent, id=ids, name=st.text(min_size=1, max_size=20), input=json_objects),
    st.builds(ToolResultContent, tool_use_id=ids, content=text, is_error=st.booleans()),
)
messages = st.lists(
    st.builds(
        ChatMessageV2,
        role=st.sampled_from(["user", "assistant"]),
        content=st.lists(blocks, min_size=1, max_size=4).map(tuple),
    ),
    min_size=1,
    max_size=4,
).map(tuple)
choices = st.one_of(
    st.none(),
    st.sampled_from(["auto", "none", "required"]).map(lambda m: ToolChoice(mode=m)),  # type: ignore[arg-type]
    names.map(lambda n: ToolChoice(mode="tool", name=n)),
)
formats = st.one_of(
    st.none(),
    st.sampled_from(["text", "json_object"]).map(lambda t: ResponseFormat(type=t)),  # type: ignore[arg-type]
    json_objects.map(lambda s: ResponseFormat(type="json_schema", json_schema=s)),
)
requests = st.builds(
    ProviderRequest,
    model=st.text(min_size=1, max_size=30),
    messages=messages,
    system=st.lists(text, max_size=2).map(tuple),
    max_tokens=st.none() | st.integers(1, 4096),
    temperature=st.none() | st.floats(0, 2),
    tools=st.lists(
        st.builds(ToolSpec, name=names, description=text, input_schema=json_objects), max_size=3
    ).map(tuple),
    tool_choice=choices,
    response_format=formats,
    stop=st.lists(text, max_size=4).map(tuple),
    top_p=st.none() | st.floats(0, 1),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    extras=json_objects,
)

_CLIENT = httpx.AsyncClient()
PROVIDERS: list[Provider] = [
    OpenAIProvider(_CLIENT, base_url="http://127.0.0.1:9/v1"),
    AnthropicProvider(_CLIENT, base_url="http://127.0.0.1:9"),
    LocalProvider(time_to_first_token_ms=0, tokens_per_second=1000, output_tokens=1),
]


def body_of(provider: Provider, request: ProviderRequest) -> dict[str, Any]:
    if isinstance(provider, OpenAIProvider | AnthropicProvider):
        return provider.body(request)
    return BedrockProvider.body(request)


@FUZZ
@given(request=requests)
def test_every_admitted_request_is_mapped_or_refused_by_every_adapter(
    request: ProviderRequest,
) -> None:
    bedrock = BedrockProvider.__new__(BedrockProvider)  # only its mapping is exercised
    for provider in [*PROVIDERS, bedrock]:
        try:
            fitted = fit(request, provider, model="m")
        except InvalidProviderRequest as exc:
            assert exc.details["param"]
            continue
        if isinstance(provider, LocalProvider):
            continue
        try:
            body = body_of(provider, fitted)
        except InvalidProviderRequest as exc:  # extras naming a field Tollgate sets
            assert exc.details["param"] == "extras"
            continue
        assert json.loads(json.dumps(body))  # a JSON body, whatever went in


@FUZZ
@given(events=st.lists(json_objects, max_size=6))
def test_tool_call_events_of_any_shape_are_read_or_refused_as_malformed(
    events: list[dict[str, Any]],
) -> None:
    """What the adapters' stream loops do with each event; a shape they cannot read raises
    one of the errors ``translate_httpx`` turns into ``provider_unavailable``."""
    anthropic, bedrock = _ToolBlocks(), BedrockToolBlocks()
    readers: list[Callable[[dict[str, Any]], object]] = [
        tool_deltas,
        anthropic.start,
        anthropic.delta,
        bedrock.start,
        bedrock.delta,
    ]
    for event in events:
        for read in readers:
            try:
                result = read(event)
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
            deltas = result if isinstance(result, list) else [result]
            for delta in deltas:
                assert delta is None or (
                    isinstance(delta, ToolUseDelta)
                    and isinstance(delta.index, int)
                    and delta.index >= 0
                    and all(v is None or isinstance(v, str) for v in (delta.id, delta.name))
                    and isinstance(delta.arguments, str)
                )
