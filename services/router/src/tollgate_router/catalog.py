"""The model catalog: which models exist, who serves them, what they cost, where they fall
back to. Loaded from a YAML or JSON file (see ``config/models.example.yaml``) and reloaded
when the file changes (mtime) or on SIGHUP; without a file, a catalog of the local model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tollgate_core.contracts import Usage
from tollgate_core.errors import ConfigurationError

logger = logging.getLogger(__name__)

_MTOK = Decimal(1_000_000)
#: costs are kept to 8 decimal places: the meter's ledger and the analytics dataset store
#: them as decimal(18, 8)
_COST_PLACES = 8
_COST_QUANTUM = Decimal(1).scaleb(-_COST_PLACES)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalProviderConfig(_Frozen):
    type: Literal["local"] = "local"
    time_to_first_token_ms: int = Field(default=150, ge=0)
    tokens_per_second: float = Field(default=80.0, gt=0)
    output_tokens: int = Field(default=40, ge=1)


class BedrockProviderConfig(_Frozen):
    type: Literal["bedrock"] = "bedrock"
    region: str | None = Field(default=None, description="default: the AWS chain's region")
    endpoint_url: str | None = Field(default=None, description="e.g. a VPC endpoint")
    profile: str | None = Field(default=None, description="a named AWS profile")


class OpenAIProviderConfig(_Frozen):
    type: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key_secret: str | None = Field(
        default=None, description="name of the key in TOLLGATE_ROUTER_PROVIDER_SECRETS"
    )
    include_usage: bool = True


class AnthropicProviderConfig(_Frozen):
    type: Literal["anthropic"] = "anthropic"
    base_url: str = "https://api.anthropic.com"
    api_key_secret: str | None = None
    api_version: str = "2023-06-01"


ProviderConfig = Annotated[
    LocalProviderConfig | BedrockProviderConfig | OpenAIProviderConfig | AnthropicProviderConfig,
    Field(discriminator="type"),
]


#: what a model's ``drop_params`` may name
DroppableParam = Literal[
    "temperature", "top_p", "seed", "stop", "response_format", "tool_choice", "extras"
]


class ModelSpec(_Frozen):
    id: str = Field(min_length=1)
    provider: str = Field(description="a key of the catalog's providers")
    upstream: str | None = Field(
        default=None, description="the provider's model id (Bedrock: model or inference profile)"
    )
    input_price_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    output_price_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    context_window: int = Field(default=8192, ge=1)
    default_max_tokens: int = Field(default=1024, ge=1)
    max_max_tokens: int = Field(default=4096, ge=1)
    groups: tuple[str, ...] = Field(default=(), description="empty: every group may use it")
    fallbacks: tuple[str, ...] = ()
    description: str = ""
    drop_params: tuple[DroppableParam, ...] = Field(
        default=(),
        description="parameters this model's provider cannot take that are dropped from a"
        " request instead of refusing it",
    )

    @property
    def upstream_id(self) -> str:
        return self.upstream or self.id

    def cost(self, usage: Usage) -> Decimal:
        """USD, rounded half-even to 8 decimal places (a price such as 0.075 per million
        tokens gives nine or more)."""
        cost = (
            usage.input_tokens * self.input_price_per_mtok
            + usage.output_tokens * self.output_price_per_mtok
        ) / _MTOK
        exponent = cost.as_tuple().exponent  # prices are finite: an int
        if isinstance(exponent, int) and exponent < -_COST_PLACES:
            return cost.quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN)
        return cost

    def allows(self, groups: tuple[str, ...]) -> bool:
        return not self.groups or bool(set(self.groups) & set(groups))

    def max_tokens(self, requested: int | None, cap: int | None = None) -> int:
        """The output limit sent to the model: the request's (or this model's default),
        at most this model's maximum and at most ``cap`` (the meter's reservation)."""
        limit = min(requested or self.default_max_tokens, self.max_max_tokens)
        return limit if cap is None or cap < 1 else min(limit, cap)


class Catalog(_Frozen):
    default_model: str
    providers: dict[str, ProviderConfig]
    models: tuple[ModelSpec, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        known = set(ids)
        if self.default_model not in known:
            raise ValueError(f"default_model {self.default_model!r} is not a model")
        for m in self.models:
            if m.provider not in self.providers:
                raise ValueError(f"model {m.id!r} names unknown provider {m.provider!r}")
            missing = set(m.fallbacks) - known
            if missing:
                raise ValueError(f"model {m.id!r} falls back to unknown {sorted(missing)}")
        return self

    def get(self, model_id: str) -> ModelSpec | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def chain(
        self,
        model_id: str,
        groups: tuple[str, ...] | None = None,
        allowed_models: tuple[str, ...] | None = None,
    ) -> list[ModelSpec]:
        """The model then its own fallbacks, in order, each once (one level: a fallback's
        fallbacks are not followed). With ``groups``, a fallback the caller may not use is
        left out, and likewise one outside ``allowed_models`` (the auth policy's grants,
        ``"*"`` for any): a fallback never serves, or bills, a model its caller is refused."""
        first = self.get(model_id)
        if first is None:
            return []
        out = [first]
        for fid in first.fallbacks:
            spec = self.get(fid)
            if spec is None or spec in out:
                continue
            if groups is not None and not spec.allows(groups):
                continue
            if allowed_models is not None and not (
                "*" in allowed_models or spec.id in allowed_models
            ):
                continue
            out.append(spec)
        return out


def local_catalog(
    name: str, *, time_to_first_token_ms: int, tokens_per_second: float, output_tokens: int
) -> Catalog:
    """The catalog used without a file: the simulated model only, free of charge."""
    return Catalog(
        default_model=name,
        providers={
            "local": LocalProviderConfig(
                time_to_first_token_ms=time_to_first_token_ms,
                tokens_per_second=tokens_per_second,
                output_tokens=output_tokens,
            )
        },
        models=(ModelSpec(id=name, provider="local", context_window=8192),),
    )


def load_catalog(path: Path) -> Catalog:
    """Parse a YAML (``.yaml``/``.yml``) or JSON catalog; raise ConfigurationError if bad."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return Catalog.model_validate(raw)
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigurationError(f"bad model catalog {path}: {exc}") from exc


class CatalogSource:
    """The current catalog; re-reads its file when the mtime changes or on :meth:`reload`.
    A bad file is logged and the previous catalog stays in force."""

    def __init__(self, catalog: Catalog, path: Path | None = None) -> None:
        self._catalog = catalog
        self._path = path
        self._mtime = self._stat()
        self._appliers: list[Callable[[Catalog], None]] = []
        self.version = 0

    def on_change(self, apply: Callable[[Catalog], None]) -> None:
        """Run ``apply`` with every new catalog before it takes effect (and once now); if it
        raises ConfigurationError the new catalog is refused."""
        apply(self._catalog)
        self._appliers.append(apply)

    @classmethod
    def from_file(cls, path: Path) -> CatalogSource:
        return cls(load_catalog(path), path)

    @property
    def current(self) -> Catalog:
        return self._catalog

    def _stat(self) -> float | None:
        if self._path is None:
            return None
        try:
            return os.stat(self._path).st_mtime
        except OSError:
            return None

    def check(self) -> bool:
        """Reload if the file changed since the last load; True when a new catalog is in force."""
        if self._path is None:
            return False
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return False
        return self.reload()

    def reload(self) -> bool:
        if self._path is None:
            return False
        self._mtime = self._stat()
        try:
            catalog = load_catalog(self._path)
            for apply in self._appliers:
                apply(catalog)
        except ConfigurationError as exc:
            logger.error("keeping the previous model catalog: %s", exc.message)
            return False
        except Exception:
            # whatever a bad file causes, the reload task must live on
            logger.exception("keeping the previous model catalog")
            return False
        self._catalog = catalog
        self.version += 1
        logger.info(
            "model catalog %s loaded: %d models, default %s",
            self._path,
            len(catalog.models),
            catalog.default_model,
        )
        return True
