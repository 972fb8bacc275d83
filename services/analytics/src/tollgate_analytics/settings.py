"""Analytics settings (``TOLLGATE_ANALYTICS_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import KafkaSettings, TelemetrySettings


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_ANALYTICS_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8084
    app_id: str = "tollgate-analytics"
    data_dir: str = "var/analytics"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
