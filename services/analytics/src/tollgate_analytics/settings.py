"""Analytics settings (``TOLLGATE_ANALYTICS_*``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core import topics
from tollgate_core.settings import KafkaSettings, TelemetrySettings


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_ANALYTICS_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8084
    #: Bearer token for the data endpoints (/query, /reports, /aggregates); unset: they
    #: answer 403 admin_disabled
    admin_token: SecretStr | None = None
    #: a query over HTTP is interrupted after this long, and refused past this many rows
    query_timeout_s: float = Field(default=30.0, gt=0)
    query_max_rows: int = Field(default=10_000, ge=1)
    app_id: str = "tollgate-analytics"
    #: the dataset's root when no S3 bucket is configured
    data_dir: str = "var/analytics"
    #: Faust's own state (table stores, worker files)
    state_dir: str = "var/analytics-state"
    s3_bucket: str | None = None
    s3_prefix: str = "analytics"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    logs_topic: str = topics.LOGS
    usage_topic: str = topics.USAGE
    dead_letter_topic: str = topics.DEAD_LETTER
    #: partitions of the source topics, and so of the aggregates table's changelog; unset:
    #: read from the broker at start (set, it must match the source topics)
    topic_partitions: int | None = Field(default=None, ge=1)

    roll_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    roll_max_records: int = Field(default=100_000, ge=1)
    roll_max_age_s: float = Field(default=10.0, gt=0)
    #: how long the group waits for a silent worker before handing its partitions on
    session_timeout_s: float = Field(default=60.0, ge=6)
    aggregate_retention_minutes: int = Field(default=24 * 60, ge=1)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @property
    def location(self) -> str:
        """Where the dataset is: ``s3://bucket/prefix`` or the local directory."""
        if self.s3_bucket:
            return f"s3://{self.s3_bucket}/{self.s3_prefix.strip('/')}".rstrip("/")
        return self.data_dir

    def pyarrow_s3_options(self) -> dict[str, Any]:
        """Options of ``pyarrow.fs.S3FileSystem`` for the query side."""
        options: dict[str, Any] = {"region": self.s3_region}
        if self.s3_endpoint_url:
            scheme, _, rest = self.s3_endpoint_url.partition("://")
            options["endpoint_override"] = rest or scheme
            options["scheme"] = scheme if rest else "https"
        return options
