"""Provider instances built from the catalog's ``providers`` section, reused across catalog
reloads while their configuration is unchanged (so pooled connections survive a reload)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from pydantic import SecretStr

from tollgate_core.errors import ConfigurationError
from tollgate_router.catalog import (
    AnthropicProviderConfig,
    BedrockProviderConfig,
    Catalog,
    LocalProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
)
from tollgate_router.errors import ModelNotFound
from tollgate_router.providers._http import ClientShards
from tollgate_router.providers.anthropic import AnthropicProvider
from tollgate_router.providers.base import Provider
from tollgate_router.providers.bedrock import BedrockProvider
from tollgate_router.providers.local import LocalProvider
from tollgate_router.providers.openai import OpenAIProvider

logger = logging.getLogger(__name__)


class ProviderRegistry:
    def __init__(
        self,
        *,
        secrets: Mapping[str, SecretStr] | None = None,
        connect_timeout_s: float = 5.0,
        max_connections: int = 2000,
        overrides: Mapping[str, Provider] | None = None,
    ) -> None:
        self._secrets = dict(secrets or {})
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._overrides = dict(overrides or {})
        self._built: dict[str, tuple[ProviderConfig, Provider, ClientShards | None]] = {}

    def __call__(self, name: str) -> Provider:
        if name in self._overrides:
            return self._overrides[name]
        built = self._built.get(name)
        if built is None:
            raise ModelNotFound(f"provider {name!r} is not configured")
        return built[1]

    def _secret(self, name: str | None) -> str | None:
        if name is None:
            return None
        secret = self._secrets.get(name)
        if secret is None:
            raise ConfigurationError(f"provider secret {name!r} is not set")
        return secret.get_secret_value()

    def _build(self, config: ProviderConfig) -> tuple[Provider, ClientShards | None]:
        if isinstance(config, LocalProviderConfig):
            return (
                LocalProvider(
                    time_to_first_token_ms=config.time_to_first_token_ms,
                    tokens_per_second=config.tokens_per_second,
                    output_tokens=config.output_tokens,
                ),
                None,
            )
        client = ClientShards(
            connect_timeout_s=self._connect_timeout_s, max_connections=self._max_connections
        )
        provider: Provider
        if isinstance(config, BedrockProviderConfig):
            provider = BedrockProvider(
                client,
                region=config.region,
                endpoint_url=config.endpoint_url,
                profile=config.profile,
            )
        elif isinstance(config, OpenAIProviderConfig):
            provider = OpenAIProvider(
                client,
                base_url=config.base_url,
                api_key=self._secret(config.api_key_secret),
                include_usage=config.include_usage,
            )
        elif isinstance(config, AnthropicProviderConfig):
            provider = AnthropicProvider(
                client,
                base_url=config.base_url,
                api_key=self._secret(config.api_key_secret),
                api_version=config.api_version,
            )
        return provider, client

    def sync(self, catalog: Catalog) -> None:
        """Build what is new or changed, then swap it all in at once and close what is gone:
        a provider that cannot be built (a missing secret, an unknown AWS profile) refuses
        the whole catalog and leaves every provider as it was."""
        fresh: dict[str, tuple[ProviderConfig, Provider, ClientShards | None]] = {}
        try:
            for name, config in catalog.providers.items():
                if name in self._overrides:
                    continue
                old = self._built.get(name)
                if old is not None and old[0] == config:
                    continue
                provider, client = self._build(config)
                fresh[name] = (config, provider, client)
        except Exception as exc:
            for _, _, client in fresh.values():
                if client is not None:
                    asyncio.get_running_loop().call_soon(_close_later, client)
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"provider {name!r}: {type(exc).__name__}: {exc}") from exc
        stale: list[ClientShards] = []
        for name, built in fresh.items():
            old = self._built.get(name)
            self._built[name] = built
            if old is not None and old[2] is not None:
                stale.append(old[2])
        for name in set(self._built) - set(catalog.providers):
            _, _, client = self._built.pop(name)
            if client is not None:
                stale.append(client)
        for client in stale:
            # in-flight streams keep their connection until they end; close after a grace
            asyncio.get_running_loop().call_later(300, _close_later, client)

    async def aclose(self) -> None:
        for _, _, client in self._built.values():
            if client is not None:
                await client.aclose()
        self._built.clear()


def _close_later(client: ClientShards) -> None:
    task = asyncio.ensure_future(client.aclose())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Future[None]] = set()
