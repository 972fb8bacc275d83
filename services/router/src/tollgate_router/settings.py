"""Router settings (``TOLLGATE_ROUTER_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import (
    DatabaseSettings,
    KafkaSettings,
    TelemetrySettings,
    database_settings,
)


class LocalModelSettings(BaseSettings):
    """The simulated model (``TOLLGATE_LOCAL_MODEL_*``): answers offline at a set pace.
    Used when no catalog file is configured."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLGATE_LOCAL_MODEL_", frozen=True, extra="ignore"
    )

    name: str = "tollgate-local"
    time_to_first_token_ms: int = Field(default=150, ge=0)
    tokens_per_second: float = Field(default=80.0, gt=0)
    output_tokens: int = Field(default=40, ge=1, description="tokens per answer, before max_tokens")


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_ROUTER_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8082
    consumer_group: str = "tollgate-router"
    max_concurrent_streams: int = Field(default=1024, ge=1)
    catalog_file: Path | None = Field(
        default=None, description="YAML/JSON model catalog; reloaded on change or SIGHUP"
    )
    provider_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description='JSON: {"openai": "sk-…"}; named by api_key_secret'
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin API; unset disables it"
    )
    # resilience
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    #: the longest stream of one attempt (see longest_answer_s)
    total_timeout_s: float = Field(default=300.0, gt=0)
    #: how long a request's journal lease outlives a router that stopped renewing it (it is
    #: renewed every third of it): a redelivery waits that long before ending the stream of
    #: a router that died
    lease_s: float = Field(default=30.0, gt=0)
    #: an admission older than this is answered request_expired, not run: the meter releases
    #: a reservation TOLLGATE_METER_RESERVATION_TTL_S (900 s) after admission, and the answer
    #: itself may take minutes
    admission_max_age_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    retry_base_delay_s: float = Field(default=0.2, ge=0)
    retry_max_delay_s: float = Field(default=2.0, ge=0)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    # streaming
    coalesce_delay_ms: int = Field(default=50, ge=0)
    coalesce_max_chars: int = Field(default=512, ge=1)
    # storage
    use_database: bool = Field(
        default=True, description="journal + prepared responses in Postgres (schema router)"
    )
    migrate_on_start: bool = True
    #: how long a request's settled mark waits to share one statement with the marks of
    #: other requests that finish meanwhile (no client waits on it)
    journal_settled_batch_ms: int = Field(default=50, ge=0, le=5_000)
    prepared_purge_interval_s: float = Field(default=60.0, gt=0)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    #: the journal takes three statements a request and a share of a fourth, at up to
    #: ``max_concurrent_streams`` at once: more connections than the other services', unless
    #: DATABASE_POOL_SIZE says otherwise
    database: DatabaseSettings = Field(default_factory=lambda: database_settings(20))
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    local_model: LocalModelSettings = Field(default_factory=LocalModelSettings)

    @property
    def longest_answer_s(self) -> float:
        """How long an answer on one model can take: the retries before its first token
        (each waits up to the first-token timeout and the longest backoff), then one stream
        of at most ``total_timeout_s``. The router starts no answer that could outlast the
        admission's ``reservation_expires_at`` by this reckoning (each fallback model would
        add its own attempts)."""
        retry = self.first_token_timeout_s + self.retry_max_delay_s
        return self.total_timeout_s + self.max_retries * retry
