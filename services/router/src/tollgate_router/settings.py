"""Router settings (``TOLLGATE_ROUTER_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.settings import KafkaSettings, TelemetrySettings


class LocalModelSettings(BaseSettings):
    """The simulated model (``TOLLGATE_LOCAL_MODEL_*``): answers offline at a set pace."""

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
    max_concurrent_streams: int = Field(default=512, ge=1)
    default_model: str = "tollgate-local"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    local_model: LocalModelSettings = Field(default_factory=LocalModelSettings)
