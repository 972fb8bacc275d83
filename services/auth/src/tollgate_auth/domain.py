"""Who a verified caller is, and the pure rules about what they may do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tollgate_auth.errors import ChannelDenied, ModelNotAllowed

Credential = Literal["jwt", "api_key", "admin_token"]
Operation = Literal["publish", "subscribe", "invoke"]
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller: ``sub`` (or an API key's principal), its groups and how it proved it."""

    sub: str
    groups: tuple[str, ...] = ()
    credential: Credential = "jwt"
    username: str | None = None
    #: seconds since the epoch after which this identity must be checked again
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    models: tuple[str, ...] = ()
    tier: str | None = None
    #: the highest rank among a caller's groups chooses the tier
    rank: int = 0


@dataclass(frozen=True, slots=True)
class Grants:
    """What a principal's groups add up to."""

    models: frozenset[str] = field(default_factory=frozenset)
    tier: str = "standard"
    admin: bool = False

    def allows(self, model: str | None) -> bool:
        """``None`` is the router's default model, which every caller may use."""
        return model is None or WILDCARD in self.models or model in self.models


def combine(
    groups: tuple[str, ...],
    policies: dict[str, GroupPolicy],
    default: GroupPolicy,
    admin_groups: frozenset[str],
) -> Grants:
    models = set(default.models)
    tier, rank = default.tier or "standard", default.rank
    for group in groups:
        policy = policies.get(group)
        if policy is None:
            continue
        models.update(policy.models)
        if policy.tier is not None and policy.rank > rank:
            tier, rank = policy.tier, policy.rank
    return Grants(frozenset(models), tier, admin=bool(admin_groups.intersection(groups)))


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """Users publish to ``/<inbound>/<own sub>[/…]`` and subscribe to ``/<outbound>/<own sub>[/…]``,
    or to a subtree of it (``/<outbound>/<own sub>/*``); only an admin group may use other
    wildcards or another user's sub."""

    inbound_namespace: str = "Inbound-Messages"
    outbound_namespace: str = "Outbound-Messages"

    def check(self, principal: Principal, grants: Grants, channel: str, operation: str) -> None:
        segments = [s for s in channel.split("/") if s] if channel.startswith("/") else []
        if not segments:
            raise ChannelDenied(f"{channel!r} is not a channel path")
        wanted = {"publish": self.inbound_namespace, "subscribe": self.outbound_namespace}.get(
            operation
        )
        if wanted is None:
            raise ChannelDenied(f"operation {operation!r} takes no channel")
        if segments[0] != wanted:
            raise ChannelDenied(f"{operation} is only allowed on /{wanted}/…")
        if grants.admin:
            return
        if any(WILDCARD in s for s in segments) and not self._own_subtree(
            principal, segments, operation
        ):
            raise ChannelDenied("a wildcard is only allowed as the last segment below your own sub")
        if len(segments) < 2 or segments[1] != principal.sub:
            raise ChannelDenied(f"{channel} is not yours: its second segment must be your sub")

    @staticmethod
    def _own_subtree(principal: Principal, segments: list[str], operation: str) -> bool:
        """``/<outbound>/<own sub>[/…]/*``: a subscription to a subtree of one's own channel."""
        return (
            operation == "subscribe"
            and len(segments) >= 3
            and segments[1] == principal.sub
            and segments[-1] == WILDCARD
            and not any(WILDCARD in s for s in segments[:-1])
        )

    @staticmethod
    def check_model(grants: Grants, model: str | None) -> None:
        if not grants.allows(model):
            raise ModelNotAllowed(f"your groups do not allow the model {model!r}")
