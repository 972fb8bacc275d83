"""The Kafka security settings every service reads (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SSL_*``,
``KAFKA_SASL_*``), as the credentials object Faust hands to its aiokafka clients."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from tollgate_core.settings import KafkaSettings


def broker_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """None for PLAINTEXT; otherwise the same TLS context and SASL mechanism the other
    services' clients use (see :meth:`KafkaSettings.client_kwargs`)."""
    context = kafka.ssl_context()
    if kafka.sasl_mechanism is None:
        return faust.SSLCredentials(context) if context is not None else None
    if kafka.sasl_mechanism == "AWS_MSK_IAM":
        from tollgate_core.bus.msk import MskIamTokenProvider

        return faust.OAuthCredentials(
            oauth_cb=MskIamTokenProvider(str(kafka.aws_region)), ssl_context=context
        )
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        ssl_context=context,
        mechanism=kafka.sasl_mechanism,
    )
