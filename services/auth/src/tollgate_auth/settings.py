"""Auth settings (``TOLLGATE_AUTH_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import DatabaseSettings, KafkaSettings, TelemetrySettings


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_AUTH_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8081

    #: the ``iss`` an external identity provider writes (Cognito:
    #: ``https://cognito-idp.<region>.amazonaws.com/<pool id>``); unset: no external IdP
    issuer: str | None = None
    #: where its keys are served; defaults to ``<issuer>/.well-known/jwks.json``
    jwks_url: str | None = None
    #: accepted ``aud`` (ID tokens) or ``client_id`` (Cognito access tokens), comma-separated;
    #: required with ``issuer`` unless ``allow_any_audience`` says otherwise
    audiences: str = ""
    #: accept a token of ``issuer`` whatever app it was issued to (every client of the pool,
    #: or of a public IdP): only when that is really meant
    allow_any_audience: bool = False
    #: accepted ``token_use`` values, comma-separated (tokens without the claim pass)
    token_uses: str = "id,access"  # noqa: S105 - claim values, not a secret
    leeway_s: int = Field(default=30, ge=0, le=300)
    jwks_cache_ttl_s: float = Field(default=3600.0, gt=0)
    #: an unknown ``kid`` refetches the JWKS, at most this often
    jwks_min_refresh_s: float = Field(default=10.0, ge=0)
    #: after a failed JWKS refresh, the wait before the next attempt doubles up to this
    jwks_max_backoff_s: float = Field(default=300.0, ge=1)
    #: how long past its TTL a cached JWKS keeps verifying while the IdP cannot be reached
    jwks_max_stale_s: float = Field(default=86_400.0, ge=0)

    #: the development identity provider: never on unless asked for
    dev_idp: bool = False
    dev_issuer: str = "tollgate-dev-idp"
    dev_audience: str = "tollgate-dev"
    dev_token_ttl_s: int = Field(default=3600, ge=1)

    #: TOML file with the group policy (see docs/identity.md); unset: built-in defaults
    policy_file: Path | None = None
    #: a bearer secret for the admin API, besides JWTs or keys of an admin group
    admin_token: SecretStr | None = None
    #: lifetime of an API key created without an expiry (0: such keys never expire)
    api_key_default_ttl_s: int = Field(default=90 * 86_400, ge=0)

    migrate_on_start: bool = True
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @model_validator(mode="after")
    def _audience_is_pinned(self) -> AuthSettings:
        if self.issuer and not self.audience_list and not self.allow_any_audience:
            raise ValueError(
                "TOLLGATE_AUTH_ISSUER is set but TOLLGATE_AUTH_AUDIENCES is empty: any app's "
                "token from that issuer would be accepted. Set the app client id(s), or "
                "TOLLGATE_AUTH_ALLOW_ANY_AUDIENCE=true if that is really meant"
            )
        return self

    @property
    def audience_list(self) -> tuple[str, ...]:
        return _split(self.audiences)

    @property
    def token_use_list(self) -> tuple[str, ...]:
        return _split(self.token_uses)

    @property
    def resolved_jwks_url(self) -> str | None:
        if self.jwks_url:
            return self.jwks_url
        if self.issuer:
            return self.issuer.rstrip("/") + "/.well-known/jwks.json"
        return None
