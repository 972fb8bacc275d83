"""Who is calling. The edge resolves an :class:`Identity` for every connection and message.

Two authorizers: :class:`AuthServiceAuthorizer` asks the auth service (the default,
``TOLLGATE_STREAM_AUTH_MODE=service``) and caches its decisions briefly;
:class:`ChannelOwnerAuthorizer` verifies nothing and is only for explicit development use
(``TOLLGATE_STREAM_AUTH_MODE=none``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Protocol

import httpx
from opentelemetry import trace

from tollgate_core.authorize import AuthorizeClient, Denial, Operation
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_stream.appsync.auth_headers import CREDENTIAL_HEADERS
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.errors import AppSyncError

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("tollgate.stream")


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    groups: tuple[str, ...] = ()
    #: models the caller's groups allow ("*" = any); ``None``: not restricted by the edge
    models: frozenset[str] | None = None
    #: the tier the auth policy gives the caller's groups, if it names one
    tier: str | None = None
    #: when the credential stops being valid (epoch seconds), if it says
    expires_at: float | None = None

    def allowed_models(self) -> tuple[str, ...] | None:
        return None if self.models is None else tuple(sorted(self.models))

    def allows(self, model: str | None) -> bool:
        """``None`` is the router's default model, which every caller may use."""
        return model is None or self.models is None or "*" in self.models or model in self.models


class ModelNotAllowed(RequestError):
    """A published event names a model the caller's groups do not allow."""

    error_type: ClassVar[str] = "model_not_allowed"
    http_status = 403


class Authorizer(Protocol):
    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        """The identity allowed to use ``channel`` with these auth headers, or raise
        :class:`AppSyncError`."""
        ...

    async def connect(self, headers: dict[str, str]) -> None:
        """Refuse a connection whose own credential (header subprotocol or upgrade request)
        is bad with an ``UnauthorizedException``; one that brings none is accepted, and each
        of its messages must then carry an ``authorization``."""
        ...


class ChannelOwnerAuthorizer:
    """Development authorizer: trusts the ``<sub>`` segment of the channel as the caller.

    It enforces the channel shape (``/<namespace>/<sub>[/…]``, no wildcard above a sub) but
    verifies no credential; it is what ``TOLLGATE_STREAM_AUTH_MODE=none`` selects.
    """

    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        if len(channel.segments) < 2:
            raise AppSyncError.forbidden(f"{channel.path}: the second segment must be your sub")
        return Identity(principal=channel.segments[1])

    async def connect(self, headers: dict[str, str]) -> None:
        return None


class AuthServiceAuthorizer:
    """Asks the auth service (``POST /v1/authorize``) and keeps each answer — allow or deny —
    for ``ttl_s`` (never past the credential's own expiry). Denials map to AppSync's errors:
    bad credentials → ``UnauthorizedException`` (401), a channel or model the caller may not
    use → ``Unauthorized`` (403); an unreachable auth service → ``ServiceUnavailableException``
    (not cached)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        inbound_namespace: str,
        outbound_namespace: str,
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self._decisions = AuthorizeClient(client)
        self._operations: dict[str, Operation] = {
            inbound_namespace: "publish",
            outbound_namespace: "subscribe",
        }
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, Identity | AppSyncError]] = OrderedDict()
        self._groups: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def groups_of(self, principal: str) -> tuple[str, ...]:
        """The groups the auth service last gave ``principal`` here (none if not seen)."""
        return self._groups.get(principal, ())

    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        operation = self._operations.get(channel.namespace)
        if operation is None:
            raise AppSyncError.forbidden(f"no operation is allowed on {channel.namespace}")
        return await self._decide(headers, operation, channel.path, None)

    async def connect(self, headers: dict[str, str]) -> None:
        if not any(k in headers for k in CREDENTIAL_HEADERS):
            return
        try:
            await self.authenticate(headers)
        except AppSyncError as exc:
            if exc.http_status == 401:
                raise
            # a policy denial or an auth service outage decides no message of this
            # connection yet: each is authorized on its own when it comes

    async def authenticate(self, headers: dict[str, str], *, model: str | None = None) -> Identity:
        """The caller of a channel-less request (e.g. the HTTP chat API)."""
        return await self._decide(headers, "invoke", None, model)

    async def _decide(
        self,
        headers: dict[str, str],
        operation: Operation,
        channel: str | None,
        model: str | None,
    ) -> Identity:
        credentials = {k: headers[k] for k in CREDENTIAL_HEADERS if k in headers}
        key = hashlib.sha256(
            json.dumps([credentials, operation, channel, model], sort_keys=True).encode()
        ).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            outcome = cached[1]
        else:
            outcome, valid_for = await self._ask(credentials, operation, channel, model)
            if valid_for > 0:
                self._remember(key, now + min(valid_for, self._ttl_s), outcome)
        if isinstance(outcome, AppSyncError):
            raise AppSyncError(outcome.appsync_type, outcome.message, outcome.http_status)
        return outcome

    def _remember(self, key: str, until: float, outcome: Identity | AppSyncError) -> None:
        self._cache[key] = (until, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def _ask(
        self,
        credentials: dict[str, str],
        operation: Operation,
        channel: str | None,
        model: str | None,
    ) -> tuple[Identity | AppSyncError, float]:
        try:
            decision = await self._decisions.decide(
                credentials, operation, channel=channel, model=model
            )
        except DependencyUnavailable as exc:
            logger.warning("auth service unavailable: %s", exc.message)
            return AppSyncError.unavailable("the auth service is unavailable"), 0
        if isinstance(decision, Denial):
            if decision.status == 401:
                return AppSyncError.unauthorized(decision.message), self._ttl_s
            if decision.status == 403:
                return AppSyncError.forbidden(decision.message), self._ttl_s
            return AppSyncError.bad_request(decision.message), self._ttl_s
        identity = Identity(
            principal=decision.principal,
            groups=decision.groups,
            models=decision.models,
            tier=decision.tier,
            expires_at=decision.expires_at,
        )
        self._groups[identity.principal] = identity.groups
        self._groups.move_to_end(identity.principal)
        while len(self._groups) > self._max_entries:
            self._groups.popitem(last=False)
        valid_for = (
            decision.expires_at - time.time() if decision.expires_at is not None else self._ttl_s
        )
        return identity, valid_for
