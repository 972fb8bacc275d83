"""Auth settings (``TOLLGATE_AUTH_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import KafkaSettings, TelemetrySettings


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_AUTH_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8081
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
