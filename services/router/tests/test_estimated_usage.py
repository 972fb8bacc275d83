"""An OpenAI-compatible server that reports no usage, through the whole router path: the
answer is served normally, and the router counts its tokens with the tokenizer the catalog
names (a real Hugging Face tokenizer file) or else the documented estimate, marking the usage
and log records as estimated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ReplyDoneV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    Usage,
    UsageRecordV1,
)
from tollgate_core.errors import ConfigurationError
from tollgate_router.catalog import Catalog, CatalogSource, ModelSpec, OpenAIProviderConfig
from tollgate_router.handlers import GenerationHandler
from tollgate_router.providers.registry import ProviderRegistry
from tollgate_router.testing import FakeProviderServer, Scenario
from tollgate_router.tokens import MESSAGE_OVERHEAD, TokenCounters, estimate_tokens

Rig = Callable[[str | None], GenerationHandler]


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    """A word-level tokenizer trained here: every word and punctuation mark one token."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["Hello from a fake model", "internationalization", "be brief"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture
async def rig(
    fake_server: FakeProviderServer, tokenizer_file: Path
) -> AsyncIterator[tuple[Rig, InMemoryPublisher]]:
    registries: list[ProviderRegistry] = []
    publisher = InMemoryPublisher()

    def make(tokenizer: str | None) -> GenerationHandler:
        catalog = Catalog(
            default_model="llama",
            providers={"llamacpp": OpenAIProviderConfig(base_url=fake_server.url + "/v1")},
            models=(
                ModelSpec(
                    id="llama",
                    provider="llamacpp",
                    tokenizer=tokenizer,
                    input_price_per_mtok=Decimal(1),
                    output_price_per_mtok=Decimal(2),
                ),
            ),
        )
        registry = ProviderRegistry(connect_timeout_s=2)
        registries.append(registry)
        source = CatalogSource(catalog)
        source.on_change(registry.sync)
        counters = TokenCounters(tokenizer_file.parent)
        source.on_change(lambda c: counters.load_all(m.tokenizer for m in c.models))
        return GenerationHandler(source, registry, publisher, counters=counters)

    try:
        yield make, publisher
    finally:
        for registry in registries:
            await registry.aclose()


def admission() -> Delivered[AdmissionV1]:
    request = ChatRequestV1(
        principal="alice",
        system=("be brief",),
        messages=(ChatMessage(role="user", content=[TextBlock(text="internationalization")]),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=0),
    )
    event = AdmissionV1(request=request, reserved_input_tokens=40, reserved_output_tokens=100)
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key="alice")


def records(publisher: InMemoryPublisher) -> tuple[UsageRecordV1, RequestLogV1, ReplyDoneV1]:
    [usage] = publisher.on(topics.USAGE)
    [log] = publisher.on(topics.LOGS)
    done = publisher.on(topics.REPLIES)[-1]
    assert isinstance(usage, UsageRecordV1) and isinstance(log, RequestLogV1)
    assert isinstance(done, ReplyDoneV1)
    return usage, log, done


@pytest.mark.parametrize("deviations", [{"no_usage"}, {"no_usage", "json"}], ids=["sse", "json"])
async def test_no_usage_is_counted_with_the_catalogs_tokenizer_and_marked(
    rig: tuple[Rig, InMemoryPublisher],
    fake_server: FakeProviderServer,
    deviations: set[str],
) -> None:
    make, publisher = rig
    fake_server.script = [Scenario(deviations=frozenset(deviations))]
    await make("tokenizer.json")(admission())
    usage, log, done = records(publisher)
    # "be brief" 2 + "internationalization" 1, and the template's tokens for two messages
    # and the reply; "Hello from a fake model" is 5 words, 5 tokens
    expected = Usage(input_tokens=3 + 3 * MESSAGE_OVERHEAD, output_tokens=5)
    assert usage.usage == expected and done.usage == expected and usage.status == "ok"
    assert usage.estimated and usage.estimated_by == "tokenizer:tokenizer.json"
    assert usage.cost_usd == Decimal("0.000022")  # 12 x 1/M + 5 x 2/M
    assert log.usage_estimated and log.usage_estimated_by == "tokenizer:tokenizer.json"
    assert (log.input_tokens, log.output_tokens) == (12, 5) and log.status == "ok"


async def test_without_a_tokenizer_the_documented_estimate_counts(
    rig: tuple[Rig, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    make, publisher = rig
    fake_server.script = [Scenario(deviations=frozenset({"no_usage", "comments", "no_id"}))]
    await make(None)(admission())
    usage, log, _ = records(publisher)
    prompt = estimate_tokens("be brief") + estimate_tokens("internationalization")
    assert usage.usage == Usage(
        input_tokens=prompt + 3 * MESSAGE_OVERHEAD,
        output_tokens=estimate_tokens("Hello from a fake model"),
    )
    assert usage.usage.output_tokens == 6  # 23 characters: more than its 5 words
    assert usage.estimated_by == "estimate" and log.usage_estimated_by == "estimate"


async def test_reported_usage_is_not_marked(
    rig: tuple[Rig, InMemoryPublisher], fake_server: FakeProviderServer
) -> None:
    make, publisher = rig
    fake_server.script = [Scenario(deviations=frozenset({"null_usage", "empty_choices"}))]
    await make("tokenizer.json")(admission())
    usage, log, _ = records(publisher)
    assert usage.usage == Usage(input_tokens=7, output_tokens=5)
    assert not usage.estimated and usage.estimated_by is None and not log.usage_estimated


def test_a_catalog_naming_a_tokenizer_that_does_not_load_is_refused(tmp_path: Path) -> None:
    counters = TokenCounters(tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="cannot load tokenizer"):
        counters.load_all(["missing.json"])
    with pytest.raises(ConfigurationError, match=r"bad\.json"):
        counters.load_all([None, "bad.json"])
