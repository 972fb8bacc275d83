from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from tollgate_core.errors import ConfigurationError
from tollgate_router.catalog import CatalogSource, load_catalog
from tollgate_router.providers.anthropic import AnthropicProvider
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.local import LocalProvider
from tollgate_router.providers.openai import OpenAIProvider
from tollgate_router.providers.registry import ProviderRegistry

EXAMPLE = Path(__file__).parents[4] / "config" / "models.example.yaml"


async def test_builds_every_provider_of_the_example_and_reuses_unchanged_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    registry = ProviderRegistry(
        secrets={"openai": SecretStr("sk-1"), "anthropic": SecretStr("sk-2")}
    )
    catalog = load_catalog(EXAMPLE)
    try:
        registry.sync(catalog)
        assert isinstance(registry("local"), LocalProvider)
        assert isinstance(registry("bedrock-us"), BedrockProvider)
        assert isinstance(registry("vllm"), OpenAIProvider)
        assert isinstance(registry("anthropic"), AnthropicProvider)
        before = registry("vllm")
        registry.sync(catalog)
        assert registry("vllm") is before
    finally:
        await registry.aclose()


async def test_a_missing_secret_refuses_the_catalog() -> None:
    registry = ProviderRegistry()
    source = CatalogSource(load_catalog(EXAMPLE))
    with pytest.raises(ConfigurationError, match="openai"):
        source.on_change(registry.sync)
    await registry.aclose()


async def test_a_provider_that_cannot_be_built_refuses_the_whole_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    path = tmp_path / "models.yaml"
    text = EXAMPLE.read_text()
    path.write_text(text)
    registry = ProviderRegistry(
        secrets={"openai": SecretStr("sk-1"), "anthropic": SecretStr("sk-2")}
    )
    source = CatalogSource.from_file(path)
    try:
        source.on_change(registry.sync)
        vllm, bedrock = registry("vllm"), registry("bedrock-us")
        # vLLM moves (built first), then Anthropic names a secret there is none of
        moved = text.replace("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1")
        path.write_text(moved.replace("api_key_secret: anthropic", "api_key_secret: gone"))
        assert source.reload() is False
        assert registry("vllm") is vllm and registry("bedrock-us") is bedrock
        # Bedrock names an AWS profile that does not exist: refused now, not on first use
        path.write_text(text.replace("# profile: prod", "profile: no-such-profile"))
        assert source.reload() is False
        assert registry("bedrock-us") is bedrock
        assert source.version == 0
        path.write_text(text.replace("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"))
        assert source.reload() is True  # the task that reloads is still alive and well
        assert registry("vllm") is not vllm and registry("bedrock-us") is bedrock
    finally:
        await registry.aclose()
