"""The decisions: who is calling (JWT or API key), and may they do this (channel, model).
Every decision and every change is written to the audit topic."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr

from tollgate_auth.apikeys import ApiKeys, looks_like_key
from tollgate_auth.domain import ChannelRules, Grants, Operation, Principal
from tollgate_auth.errors import AuthError, Forbidden, Unauthenticated
from tollgate_auth.tokens import TokenVerifier
from tollgate_core import topics
from tollgate_core.bus import Publisher
from tollgate_core.contracts import AuditEventV1
from tollgate_core.errors import TollgateError
from tollgate_core.http import secret_equals

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    principal: Principal
    grants: Grants


class PolicyGrants(Protocol):
    async def grants(self, groups: tuple[str, ...]) -> Grants: ...


class Authenticator:
    """Turns the auth headers a client sent into a :class:`Principal`."""

    def __init__(
        self,
        verifier: TokenVerifier,
        api_keys: ApiKeys,
        *,
        admin_token: SecretStr | None = None,
    ) -> None:
        self._verifier = verifier
        self._api_keys = api_keys
        self._admin_token = admin_token

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        lowered = {k.lower(): v for k, v in headers.items()}
        api_key = lowered.get("x-api-key")
        if api_key:
            return await self._api_keys.verify(api_key.strip())
        authorization = lowered.get("authorization", "").strip()
        if not authorization:
            raise Unauthenticated("no credentials: send Authorization or x-api-key")
        scheme, _, rest = authorization.partition(" ")
        credential = rest.strip() if scheme.lower() == "bearer" and rest else authorization
        if looks_like_key(credential):
            return await self._api_keys.verify(credential)
        if self._admin_token is not None and secret_equals(
            credential, self._admin_token.get_secret_value()
        ):
            return Principal(sub="admin", groups=("admin",), credential="admin_token")
        return await self._verifier.verify(credential)


class Audit:
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def record(self, event: AuditEventV1) -> None:
        try:
            await self._publisher.publish(topics.AUDIT, event, key=event.principal)
        except TollgateError as exc:
            # the decision stands; losing its audit record is logged, never hidden
            logger.error("audit event %s not written: %s", event.event_id, exc)


class Authorizer:
    def __init__(
        self,
        authenticator: Authenticator,
        policy_grants: PolicyGrants,
        rules: ChannelRules,
        audit: Audit,
    ) -> None:
        self.authenticator = authenticator
        self._grants = policy_grants
        self._rules = rules
        self._audit = audit

    async def authorize(
        self,
        headers: Mapping[str, str],
        *,
        operation: Operation,
        channel: str | None = None,
        model: str | None = None,
    ) -> Decision:
        principal: Principal | None = None
        try:
            principal = await self.authenticator.authenticate(headers)
            grants = await self._grants.grants(principal.groups)
            if channel is not None or operation != "invoke":
                self._rules.check(principal, grants, channel or "", operation)
            self._rules.check_model(grants, model)
        except AuthError as exc:
            await self._audit.record(
                AuditEventV1(
                    action="authorize",
                    outcome="deny",
                    principal=principal.sub if principal else None,
                    groups=principal.groups if principal else (),
                    credential=principal.credential if principal else "none",
                    operation=operation,
                    channel=channel,
                    model=model,
                    reason=exc.error_type,
                )
            )
            raise
        await self._audit.record(
            AuditEventV1(
                action="authorize",
                outcome="allow",
                principal=principal.sub,
                groups=principal.groups,
                credential=principal.credential,
                operation=operation,
                channel=channel,
                model=model,
            )
        )
        return Decision(principal, grants)

    async def admin(self, headers: Mapping[str, str]) -> Principal:
        """The caller of an admin endpoint, who must be in an admin group."""
        principal = await self.authenticator.authenticate(headers)
        grants = await self._grants.grants(principal.groups)
        if not grants.admin:
            raise Forbidden("the admin API needs an admin group")
        return principal
