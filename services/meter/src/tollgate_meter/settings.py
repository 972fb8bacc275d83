"""Meter settings (``TOLLGATE_METER_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.limits import Limits
from tollgate_core.settings import (
    DatabaseSettings,
    KafkaSettings,
    TelemetrySettings,
    database_settings,
)


class MeterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_METER_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8083
    consumer_group: str = "tollgate-meter"
    #: admissions decided side by side; one principal's are decided in batches, one at a time
    admission_concurrency: int = Field(default=32, ge=1)
    #: usage records wait for nobody: the settlement consumer's fetches wait at least this
    #: long even while records flow (a reservation is settled up to that much later; against
    #: Kafka, whose long poll answers at once, this changes nothing)
    settlement_fetch_wait_ms: int = Field(default=100, ge=0, le=10_000)
    #: usage records handled side by side; those in hand together are settled in one
    #: statement (one transaction)
    settlement_concurrency: int = Field(default=200, ge=1, le=10_000)
    #: reserved for a request without max_tokens until the router's catalog has been read
    default_max_tokens: int = Field(default=1024, ge=1, description="reserved when unset")
    #: the router, whose GET /v1/models gives each model's default and maximum output
    router_url: str = "http://127.0.0.1:8082"
    catalog_refresh_s: float = Field(default=30.0, gt=0)
    #: TOML file of limit tiers (see docs/metering.md); unset: the built-in defaults
    tiers_file: Path | None = None
    bucket_seconds: int = Field(default=600, ge=1, le=86_400)
    #: a reservation not settled after this long is released by the sweeper
    reservation_ttl_s: int = Field(default=900, ge=1)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    #: finished reservation rows are kept this long beyond the longest window (at least a
    #: month): a replayed usage record is recognised only while its row exists. 14 days covers
    #: the usage topic's 7-day retention plus Kafka's default 7-day segment roll (a record is
    #: deleted with its segment, so it can be read up to about 14 days after it was written)
    reservation_margin_s: int = Field(default=14 * 86_400, ge=0)
    #: admit without a reservation while Postgres is unreachable (default: refuse)
    fail_open: bool = False
    #: the auth service, asked who calls /v1/usage/me
    auth_url: str = "http://127.0.0.1:8081"
    auth_timeout_s: float = Field(default=5.0, gt=0)
    #: a bearer secret for the admin API, besides callers of an admin group
    admin_token: SecretStr | None = None
    migrate_on_start: bool = True
    limits: Limits = Field(default_factory=Limits)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    #: a larger pool than the other services' (it takes up to 32 admissions at once), unless
    #: DATABASE_POOL_SIZE says otherwise
    database: DatabaseSettings = Field(default_factory=lambda: database_settings(20))
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
