"""Edge settings (``TOLLGATE_STREAM_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.limits import Limits
from tollgate_core.settings import KafkaSettings, TelemetrySettings


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_STREAM_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    inbound_namespace: str = "Inbound-Messages"
    outbound_namespace: str = "Outbound-Messages"
    connection_timeout_ms: int = Field(default=300_000, ge=10_000)
    keepalive_interval_s: float = Field(default=60.0, gt=0)
    max_subscriptions: int = Field(default=200, ge=1)
    max_events_per_publish: int = Field(default=5, ge=1)
    max_event_bytes: int = Field(default=240 * 1024, ge=1)
    send_queue_size: int = Field(default=1024, ge=1)
    #: the largest HTTP request body (``POST /event``, ``/v1/chat/completions``)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    #: the largest WebSocket message a client may send
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: the deepest JSON nesting accepted in a body, a message or an event
    max_json_depth: int = Field(default=32, ge=2, le=500)
    #: open WebSocket connections per process, and per client address
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_address: int = Field(default=200, ge=1)
    #: a connection that has not sent ``connection_init`` by then is closed
    connection_init_timeout_s: float = Field(default=30.0, gt=0)
    #: a connection with no subscription that sends nothing for this long is closed
    idle_timeout_s: float = Field(default=300.0, gt=0)
    #: WebSocket protocol pings from the server (a peer that does not answer is dropped)
    ws_ping_interval_s: float = Field(default=20.0, gt=0)
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    #: "service" asks the auth service; "none" trusts the channel's <sub> (development only)
    auth_mode: Literal["service", "none"] = "service"
    auth_url: str = "http://127.0.0.1:8081"
    auth_timeout_s: float = Field(default=5.0, gt=0)
    #: how long an authorization decision is reused for the same credential and channel
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    #: how often an open subscription's permission is checked again: a revoked credential
    #: loses its subscriptions within this plus ``auth_cache_ttl_s`` (an expiring one at
    #: its expiry)
    reauthorize_interval_s: float = Field(default=30.0, gt=0)
    #: PEM certificate and key: the edge serves HTTPS/WSS when both are given
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: the router's base URL, asked for ``GET /v1/models``
    router_url: str = "http://127.0.0.1:8082"
    #: models ``GET /v1/models`` lists when the router cannot say (comma-separated)
    default_models: str = "tollgate-local"
    #: how long an OpenAI API request waits for its next reply event
    openai_reply_timeout_s: float = Field(default=300.0, gt=0)
    #: development OpenAI authentication: the principal every bearer token maps to (unset:
    #: the token itself is the principal)
    openai_dev_principal: str | None = None
    #: serve: the edge for clients; appsync: bridge to a remote AppSync Events API (its
    #: inbound namespace feeds the pipeline, replies are published to it); relay: a plain
    #: AppSync Events pub/sub with no pipeline (a stand-in remote for development and tests)
    mode: Literal["serve", "appsync", "relay"] = "serve"
    #: bridge mode: the remote's HTTP endpoint (``https://<id>.appsync-api.<region>.amazonaws.com/event``)
    appsync_endpoint: str | None = None
    #: bridge mode: the realtime endpoint, when it is not derived from ``appsync_endpoint``
    appsync_realtime_endpoint: str | None = None
    appsync_auth: Literal["api_key", "iam"] = "api_key"
    appsync_api_key: SecretStr | None = None
    appsync_region: str = "us-east-1"
    #: relay mode: the API keys it accepts, comma-separated (with no key and no IAM
    #: credentials it accepts every caller)
    relay_api_keys: str = ""
    #: relay mode: the IAM credentials whose SigV4 signatures (service appsync) it accepts
    relay_iam_access_key_id: str | None = None
    relay_iam_secret_access_key: SecretStr | None = None
    relay_region: str = "us-east-1"
    #: origins (``scheme://host[:port]``, comma-separated) allowed to call ``/event`` and
    #: ``/v1/*`` from a browser page served elsewhere; none by default
    cors_origins: str = ""
    #: the meter's base URL: ``/v1/usage/me`` and ``/v1/admin/usage`` are answered through it
    meter_url: str = "http://127.0.0.1:8083"
    #: the meter's admin token: with it, the last ``metadata`` event of an AppSync answer
    #: carries the caller's usage and limits (``tokenUsage``); without it, it does not
    meter_admin_token: SecretStr | None = None
    #: how long the edge waits for the meter (a proxied call, or the answer's settlement)
    meter_timeout_s: float = Field(default=3.0, gt=0, le=30)
    #: fractions of a window's limit past which an answer warns (comma-separated)
    usage_warning_thresholds: str = "0.8,0.95"
    #: the web page at ``/``; ``web_sign_in``: ``local`` (the development IdP of
    #: ``auth_url``), ``oidc`` (authorization code with PKCE, ``oidc_*``), or ``token``
    #: (paste an access token or API key)
    web_enabled: bool = True
    web_sign_in: Literal["local", "oidc", "token"] = "token"
    oidc_authorize_url: str | None = None
    oidc_token_url: str | None = None
    oidc_client_id: str | None = None
    oidc_scopes: str = "openid email profile"
    limits: Limits = Field(default_factory=Limits)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @model_validator(mode="after")
    def _consistent(self) -> StreamSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key are given together or not at all")
        if self.mode == "appsync":
            if not self.appsync_endpoint:
                raise ValueError("bridge mode needs appsync_endpoint")
            if self.appsync_auth == "api_key" and self.appsync_api_key is None:
                raise ValueError("bridge mode with api_key auth needs appsync_api_key")
        if self.web_sign_in == "oidc" and not (
            self.oidc_authorize_url and self.oidc_token_url and self.oidc_client_id
        ):
            raise ValueError(
                "web_sign_in=oidc needs oidc_authorize_url, oidc_token_url and oidc_client_id"
            )
        self.warning_thresholds()  # refuse a bad list at start
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def warning_thresholds(self) -> tuple[float, ...]:
        try:
            values = sorted({float(v) for v in self.usage_warning_thresholds.split(",") if v})
        except ValueError as exc:
            raise ValueError("usage_warning_thresholds: comma-separated fractions") from exc
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("usage_warning_thresholds are fractions in (0, 1]")
        return tuple(values)

    @property
    def relay_api_key_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.relay_api_keys.split(",") if k.strip())

    def model_list(self) -> list[str]:
        return [m.strip() for m in self.default_models.split(",") if m.strip()]
