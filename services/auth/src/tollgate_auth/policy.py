"""Group policy: which models a group may call and its limit tier.

The TOML file (``TOLLGATE_AUTH_POLICY_FILE``) gives the base::

    admin_groups = ["admin"]
    [default]                 # every caller, whatever its groups
    models = ["tollgate-local"]
    tier = "standard"
    [groups.premium]
    models = ["*"]
    tier = "premium"
    rank = 10

Groups set through the admin API are stored in Postgres and take precedence over the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from tollgate_auth.domain import Grants, GroupPolicy, combine
from tollgate_core.errors import ConfigurationError


class GroupPolicyModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    models: tuple[str, ...] = ()
    tier: str | None = Field(default=None, max_length=64)
    rank: int = 0

    def to_domain(self) -> GroupPolicy:
        return GroupPolicy(models=self.models, tier=self.tier, rank=self.rank)


class PolicyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    admin_groups: tuple[str, ...] = ("admin",)
    #: without a policy a caller may use only the router's default model (a request that
    #: names none, or the local simulated model by name); the admin group any model
    default: GroupPolicyModel = GroupPolicyModel(models=("tollgate-local",), tier="standard")
    groups: dict[str, GroupPolicyModel] = Field(
        default_factory=lambda: {"admin": GroupPolicyModel(models=("*",), tier="admin", rank=100)}
    )


def load_policy_file(path: Path | None) -> PolicyFile:
    if path is None:
        return PolicyFile()
    try:
        return PolicyFile.model_validate(tomllib.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load policy file {path}: {exc}") from exc


class PolicyStore(Protocol):
    """Group policies set at run time (admin API)."""

    async def all(self) -> dict[str, GroupPolicy]: ...

    async def put(self, group: str, policy: GroupPolicy) -> None: ...

    async def delete(self, group: str) -> bool: ...


class InMemoryPolicyStore:
    def __init__(self) -> None:
        self._groups: dict[str, GroupPolicy] = {}

    async def all(self) -> dict[str, GroupPolicy]:
        return dict(self._groups)

    async def put(self, group: str, policy: GroupPolicy) -> None:
        self._groups[group] = policy

    async def delete(self, group: str) -> bool:
        return self._groups.pop(group, None) is not None


class Policy:
    def __init__(self, base: PolicyFile, store: PolicyStore) -> None:
        self.base = base
        self.store = store
        self.admin_groups = frozenset(base.admin_groups)

    async def groups(self) -> dict[str, GroupPolicy]:
        merged = {name: p.to_domain() for name, p in self.base.groups.items()}
        merged.update(await self.store.all())
        return merged

    async def grants(self, groups: tuple[str, ...]) -> Grants:
        return combine(
            groups, await self.groups(), self.base.default.to_domain(), self.admin_groups
        )
