from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from tollgate_core.contracts import Usage
from tollgate_core.errors import ConfigurationError
from tollgate_router.catalog import (
    BedrockProviderConfig,
    Catalog,
    CatalogSource,
    OpenAIProviderConfig,
    load_catalog,
)

EXAMPLE = Path(__file__).parents[3] / "config" / "models.example.yaml"


def test_the_example_catalog_is_valid_and_documents_bedrock_and_openai() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog.default_model == "tollgate-local"
    assert isinstance(catalog.providers["bedrock-us"], BedrockProviderConfig)
    assert isinstance(catalog.providers["vllm"], OpenAIProviderConfig)
    haiku = catalog.get("claude-haiku")
    assert haiku is not None and haiku.upstream_id.startswith("us.anthropic.")
    assert [m.id for m in catalog.chain("nova-pro")] == ["nova-pro", "claude-haiku"]
    assert haiku.cost(Usage(input_tokens=1_000_000, output_tokens=500_000)) == Decimal("2.8")
    assert haiku.max_tokens(None) == 1024 and haiku.max_tokens(100_000) == 8192


def test_a_cost_is_rounded_half_even_to_8_decimal_places() -> None:
    catalog = Catalog.model_validate(
        {
            "default_model": "cheap",
            "providers": {"l": {"type": "local"}},
            "models": [
                {
                    "id": "cheap",
                    "provider": "l",
                    "input_price_per_mtok": "0.075",
                    "output_price_per_mtok": "0.3",
                }
            ],
        }
    )
    cheap = catalog.get("cheap")
    assert cheap is not None
    # 1 x 0.075/M = 0.000000075: half-even rounds ...7|5 up to ...8
    assert cheap.cost(Usage(input_tokens=1, output_tokens=0)) == Decimal("0.00000008")
    # 17 x 0.075/M = 0.000001275: ...7|5 goes up; 7 x 0.075/M = 0.000000525: ...2|5 stays
    assert cheap.cost(Usage(input_tokens=17, output_tokens=0)) == Decimal("0.00000128")
    assert cheap.cost(Usage(input_tokens=7, output_tokens=0)) == Decimal("0.00000052")
    cost = cheap.cost(Usage(input_tokens=123_457, output_tokens=3))
    assert cost == Decimal("0.00926018")  # 0.009259275 + 0.0000009 = 0.009260175
    assert -cost.as_tuple().exponent <= 8  # fits decimal(18, 8) exactly
    # a cost that needs no rounding is left as it was
    assert str(cheap.cost(Usage(input_tokens=1_000_000, output_tokens=0))) == "0.075"


def test_json_works_too_and_inconsistencies_are_refused(tmp_path: Path) -> None:
    good = {
        "default_model": "m",
        "providers": {"l": {"type": "local"}},
        "models": [{"id": "m", "provider": "l"}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(good))
    assert load_catalog(path).get("m") is not None
    for bad in (
        {**good, "default_model": "nope"},
        {**good, "models": [{"id": "m", "provider": "nope"}]},
        {**good, "models": [{"id": "m", "provider": "l", "fallbacks": ["x"]}]},
        {**good, "models": [{"id": "m", "provider": "l", "input_price_per_mtok": -1}]},
        {**good, "providers": {"l": {"type": "carrier-pigeon"}}},
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigurationError):
            load_catalog(path)


def test_the_catalog_reloads_on_change_and_keeps_the_old_one_when_the_new_is_bad(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "default_model: a\nproviders: {l: {type: local}}\nmodels: [{id: a, provider: l}]\n"
    )
    source = CatalogSource.from_file(path)
    applied: list[Catalog] = []
    source.on_change(applied.append)
    assert not source.check()
    path.write_text(
        "default_model: b\nproviders: {l: {type: local}}\n"
        "models: [{id: a, provider: l}, {id: b, provider: l}]\n"
    )
    os.utime(path, (1, 1))
    assert source.check() and source.current.default_model == "b"
    assert [c.default_model for c in applied] == ["a", "b"]
    path.write_text("default_model: zzz\n")
    os.utime(path, (2, 2))
    assert not source.check()
    assert source.current.default_model == "b"

    def refuse(_: Catalog) -> None:
        raise ConfigurationError("provider secret missing")

    source.on_change(lambda c: None)
    source._appliers.append(refuse)
    path.write_text(
        "default_model: a\nproviders: {l: {type: local}}\nmodels: [{id: a, provider: l}]\n"
    )
    assert not source.reload() and source.current.default_model == "b"


def _with(models: list[dict[str, object]]) -> dict[str, object]:
    return {
        "default_model": "chat",
        "providers": {"l": {"type": "local"}, "b": {"type": "bedrock", "region": "us-east-1"}},
        "models": [{"id": "chat", "provider": "l"}, *models],
    }


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"id": "e", "kind": "embedding", "provider": "l"}], "cannot embed"),
        (
            [
                {"id": "e", "kind": "embedding", "provider": "b", "fallbacks": ["f"]},
                {"id": "f", "kind": "embedding", "provider": "b"},
            ],
            "cannot have fallbacks",
        ),
        (
            [
                {"id": "c2", "provider": "b", "fallbacks": ["e"]},
                {"id": "e", "kind": "embedding", "provider": "b"},
            ],
            "falls back to an embedding model",
        ),
    ],
    ids=["local-cannot-embed", "embedding-fallbacks", "chat-to-embedding-fallback"],
)
def test_embedding_models_are_checked(models: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Catalog.model_validate(_with(models))


def test_the_example_documents_embedding_models() -> None:
    catalog = load_catalog(EXAMPLE)
    kinds = {m.id: m.kind for m in catalog.models}
    assert kinds["titan-embed"] == kinds["cohere-embed"] == kinds["bge-small"] == "embedding"
    assert kinds["claude-haiku"] == "chat"
