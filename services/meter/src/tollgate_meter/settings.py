"""Meter settings (``TOLLGATE_METER_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import DatabaseSettings, KafkaSettings, TelemetrySettings


class MeterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_METER_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8083
    consumer_group: str = "tollgate-meter"
    default_max_tokens: int = Field(default=1024, ge=1, description="reserved when unset")
    migrate_on_start: bool = True
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
