"""Settings shared by every service.

Each service has one frozen settings class with its own environment prefix
(``TOLLGATE_<SERVICE>_``); the pieces below are embedded in it and read their own, widely
known variables (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``OTEL_*``). Nothing else in
Tollgate reads the environment.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.errors import ConfigurationError


class KafkaSettings(BaseSettings):
    """How to reach Kafka.

    The defaults suit a real Kafka cluster: a fetch is a long poll that the broker answers as
    soon as a record arrives, so ``fetch_max_wait_ms`` (500) costs no latency and only bounds
    how often an idle consumer asks. A broker that answers a fetch only when its wait runs out
    (Tansu, the local stand-in) needs a short wait on the request path instead; there
    ``fetch_idle_max_wait_ms`` lets a consumer that has seen no record for
    ``fetch_idle_after_ms`` poll with a long wait, and go back to the short one with the first
    record, so an idle stack costs next to nothing. The local runner sets all three.

    Security: ``security_protocol`` ``SSL`` or ``SASL_SSL`` verifies the brokers against
    ``ssl_cafile`` (the system's trust store when unset), with an optional client certificate
    (``ssl_certfile`` + ``ssl_keyfile``); ``SASL_*`` adds ``PLAIN``, ``SCRAM-SHA-256``/``512``
    (``sasl_username``/``sasl_password``) or ``AWS_MSK_IAM`` (SASL/OAUTHBEARER with a token
    signed by the AWS default credential chain, for ``aws_region``)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id_prefix: str = "tollgate"
    fetch_max_wait_ms: int = Field(default=500, ge=0, le=10_000)
    #: the wait of a consumer that has been idle (None: always ``fetch_max_wait_ms``)
    fetch_idle_max_wait_ms: int | None = Field(default=None, ge=0, le=10_000)
    fetch_idle_after_ms: int = Field(default=5_000, ge=0)
    linger_ms: int = Field(default=0, ge=0, le=1_000)
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: prepended to every Tollgate topic name (e.g. ``<release>.``), so that two installations
    #: can share one Kafka; the code keeps using the names in :mod:`tollgate_core.topics`
    topic_prefix: str = ""

    def topic(self, name: str) -> str:
        """The topic's name on the broker."""
        return self.topic_prefix + name

    def logical_topic(self, name: str) -> str:
        """The name the code knows a broker topic by (the prefix taken off)."""
        return name.removeprefix(self.topic_prefix)

    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    aws_region: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol.startswith("SASL_")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        if not tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError("KAFKA_SSL_* files need KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_MECHANISM"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                "KAFKA_SASL_MECHANISM needs KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL"
            )
        if self.sasl_mechanism == "AWS_MSK_IAM":
            if self.security_protocol != "SASL_SSL" or not self.aws_region:
                raise ValueError(
                    "KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs "
                    "KAFKA_SECURITY_PROTOCOL=SASL_SSL and KAFKA_AWS_REGION"
                )
        elif self.sasl_mechanism is not None and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the brokers, or None for a plaintext protocol. A file that
        cannot be read is a :class:`ConfigurationError` naming the setting."""
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"KAFKA_SSL_CAFILE={self.ssl_cafile}: {exc}") from exc
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"KAFKA_SSL_CERTFILE={self.ssl_certfile} / KAFKA_SSL_KEYFILE="
                    f"{self.ssl_keyfile}: {exc}"
                ) from exc
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments common to aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.sasl_mechanism == "AWS_MSK_IAM":
            from tollgate_core.bus.msk import MskIamTokenProvider

            kwargs["sasl_mechanism"] = "OAUTHBEARER"
            kwargs["sasl_oauth_token_provider"] = MskIamTokenProvider(str(self.aws_region))
        elif self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs


class DatabaseSettings(BaseSettings):
    """Postgres connection; each service keeps its tables in its own schema."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/tollgate")
    #: connections each process keeps open: all it opens (no overflow beyond the pool)
    database_pool_size: int = Field(default=10, ge=1)
    #: how long a caller waits for a free connection before Postgres counts as unavailable
    database_pool_timeout_s: float = Field(default=10.0, gt=0)
    #: a query that takes longer fails (and the service treats Postgres as unavailable)
    #: instead of stalling, e.g. when the server hangs rather than refuses connections
    database_command_timeout_s: float = Field(default=10.0, gt=0)

    @property
    def async_url(self) -> str:
        """The URL with the asyncpg driver, whatever scheme the user wrote."""
        url = self.database_url.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url


class TelemetrySettings(BaseSettings):
    """Logs, traces and metrics. Traces are exported over OTLP when an endpoint is set, as
    the standard ``OTEL_EXPORTER_OTLP_*`` variables say: ``…_TRACES_ENDPOINT`` is used as
    given, ``…_ENDPOINT`` gets ``/v1/traces`` appended for HTTP; ``…_PROTOCOL`` (or
    ``…_TRACES_PROTOCOL``) is ``http/protobuf`` (default) or ``grpc``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf", "grpc"] | None = None
    otel_service_namespace: str = "tollgate"
    #: serve ``/metrics`` on this port of its own instead of the service's port, so that a
    #: public port (the edge's) does not show it; unset: on the service's port
    metrics_port: int | None = Field(
        default=None, ge=0, le=65_535, validation_alias="TOLLGATE_METRICS_PORT"
    )
    metrics_host: str = Field(default="127.0.0.1", validation_alias="TOLLGATE_METRICS_HOST")
    log_level: str = Field(default="INFO", validation_alias="TOLLGATE_LOG_LEVEL")
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias="TOLLGATE_LOG_FORMAT"
    )


def masked(settings: BaseSettings) -> dict[str, Any]:
    """Settings as a dict with every secret masked, safe to log at start-up."""
    return settings.model_dump(mode="json")


def database_settings(default_pool_size: int) -> DatabaseSettings:
    """The database settings of a service whose pool is ``default_pool_size`` connections
    unless ``DATABASE_POOL_SIZE`` says otherwise."""
    if any(k.upper() == "DATABASE_POOL_SIZE" for k in os.environ):
        return DatabaseSettings()
    return DatabaseSettings(database_pool_size=default_pool_size)
