"""Assembling the auth service from its parts (used by ``main`` and by tests)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.applications import Starlette

from tollgate_auth.adapters.jwks import HttpKeySource
from tollgate_auth.api import Api
from tollgate_auth.apikeys import ApiKeys, ApiKeyStore
from tollgate_auth.devidp import DevIdentityProvider
from tollgate_auth.domain import ChannelRules
from tollgate_auth.policy import Policy, PolicyStore, load_policy_file
from tollgate_auth.service import Audit, Authenticator, Authorizer
from tollgate_auth.settings import AuthSettings
from tollgate_auth.tokens import Issuer, JwksCache, StaticKeys, TokenVerifier
from tollgate_core.bus import Publisher
from tollgate_core.health import Health
from tollgate_core.http import ops_app


@dataclass
class AuthComponents:
    authorizer: Authorizer
    api_keys: ApiKeys
    policy: Policy
    audit: Audit
    dev_idp: DevIdentityProvider | None


def build(
    settings: AuthSettings,
    *,
    key_store: ApiKeyStore,
    policy_store: PolicyStore,
    publisher: Publisher,
    http: httpx.AsyncClient,
) -> AuthComponents:
    issuers: list[Issuer] = []
    jwks_url = settings.resolved_jwks_url
    if settings.issuer and jwks_url:
        issuers.append(
            Issuer(
                iss=settings.issuer,
                keys=JwksCache(
                    HttpKeySource(jwks_url, http),
                    ttl_s=settings.jwks_cache_ttl_s,
                    min_refresh_s=settings.jwks_min_refresh_s,
                    max_backoff_s=settings.jwks_max_backoff_s,
                    max_stale_s=settings.jwks_max_stale_s,
                ),
                audiences=settings.audience_list,
                token_uses=settings.token_use_list,
            )
        )
    dev_idp: DevIdentityProvider | None = None
    if settings.dev_idp:
        dev_idp = DevIdentityProvider(
            issuer=settings.dev_issuer,
            audience=settings.dev_audience,
            ttl_s=settings.dev_token_ttl_s,
        )
        issuers.append(
            Issuer(
                iss=dev_idp.issuer,
                keys=JwksCache(StaticKeys(dev_idp.jwks()), ttl_s=3600, min_refresh_s=0),
                audiences=(dev_idp.audience,),
            )
        )
    api_keys = ApiKeys(key_store, default_ttl_s=settings.api_key_default_ttl_s or None)
    policy = Policy(load_policy_file(settings.policy_file), policy_store)
    audit = Audit(publisher)
    authenticator = Authenticator(
        TokenVerifier(issuers, leeway_s=settings.leeway_s),
        api_keys,
        admin_token=settings.admin_token,
    )
    authorizer = Authorizer(authenticator, policy, ChannelRules(), audit)
    return AuthComponents(authorizer, api_keys, policy, audit, dev_idp)


def create_app(components: AuthComponents, health: Health, *, metrics: bool = True) -> Starlette:
    api = Api(
        components.authorizer,
        components.api_keys,
        components.policy,
        components.audit,
        components.dev_idp,
    )
    return ops_app(health, api.routes(), metrics=metrics)
