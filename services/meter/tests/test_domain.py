from __future__ import annotations

from tollgate_core.contracts import (
    ChatMessage,
    ChatMessageV2,
    ChatRequestV1,
    ChatRequestV2,
    ImageContent,
    ReplyTo,
    ResponseFormat,
    TextBlock,
    TextContent,
    ToolResultContent,
    ToolSpec,
    ToolUseContent,
)
from tollgate_meter.domain import IMAGE_TOKENS, OutputLimit, estimate


def request(
    text: str, max_tokens: int | None = None, system: tuple[str, ...] = ()
) -> ChatRequestV1:
    return ChatRequestV1(
        principal="p",
        messages=(ChatMessage(role="user", content=(TextBlock(text=text),)),),
        system=system,
        max_tokens=max_tokens,
        reply_to=ReplyTo(topic="t", partition=0),
    )


def test_estimate_reserves_max_tokens_or_the_default() -> None:
    assert estimate(request("hi", max_tokens=50), default_max_tokens=1024).output_tokens == 50
    assert estimate(request("hi"), default_max_tokens=1024).output_tokens == 1024


def test_estimate_grows_with_prompt_and_system_text() -> None:
    short = estimate(request("x" * 30), default_max_tokens=1).input_tokens
    long = estimate(request("x" * 3000), default_max_tokens=1).input_tokens
    with_system = estimate(request("x" * 30, system=("be brief",)), default_max_tokens=1)
    assert long > short > 0
    assert with_system.input_tokens > short
    assert long >= 1000  # errs high: at most three characters a token


def test_estimate_counts_tools_tool_turns_and_images_and_v1_equals_v2() -> None:
    plain = request("what is the weather?")
    v2 = ChatRequestV2.of(plain)
    assert estimate(v2, default_max_tokens=1) == estimate(plain, default_max_tokens=1)
    base = estimate(v2, default_max_tokens=1).input_tokens
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tool = ToolSpec(name="get_weather", description="x" * 300, input_schema=schema)
    with_tools = v2.model_copy(update={"tools": (tool,)})
    assert estimate(with_tools, default_max_tokens=1).input_tokens >= base + 100
    turns = (
        *v2.messages,
        ChatMessageV2(
            role="assistant",
            content=(ToolUseContent(id="c1", name="get_weather", input={"city": "P" * 300}),),
        ),
        ChatMessageV2(
            role="user", content=(ToolResultContent(tool_use_id="c1", content="y" * 300),)
        ),
    )
    with_turns = estimate(v2.model_copy(update={"messages": turns}), default_max_tokens=1)
    assert with_turns.input_tokens >= base + 200
    image = ChatMessageV2(
        role="user",
        content=(TextContent(text="and here?"), ImageContent(url="https://example.com/a.png")),
    )
    with_image = estimate(v2.model_copy(update={"messages": (image,)}), default_max_tokens=1)
    assert with_image.input_tokens >= IMAGE_TOKENS
    fmt = ResponseFormat(type="json_schema", json_schema={"description": "z" * 300})
    with_schema = estimate(v2.model_copy(update={"response_format": fmt}), default_max_tokens=1)
    assert with_schema.input_tokens >= base + 100


def test_with_the_catalog_known_the_reservation_is_what_the_router_will_allow() -> None:
    """The router gives a request without max_tokens the model's default and caps any at
    its maximum: the meter reserves exactly that, not its own default."""
    limit = OutputLimit(default=256, maximum=1024)
    assert estimate(request("hi"), default_max_tokens=4000, output_limit=limit).output_tokens == 256
    capped = estimate(request("hi", max_tokens=50_000), default_max_tokens=1, output_limit=limit)
    assert capped.output_tokens == 1024
    within = estimate(request("hi", max_tokens=300), default_max_tokens=1, output_limit=limit)
    assert within.output_tokens == 300
