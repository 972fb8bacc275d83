"""A TLS check before a Kafka client starts.

aiokafka logs a broker whose certificate does not verify and then reports only "Unable to
bootstrap", which a service would retry forever while staying not-ready. A certificate that
does not verify will not start verifying by waiting, so :func:`verify_tls` turns it into a
:class:`~tollgate_core.errors.ConfigurationError` that names the broker, the CA bundle and
the reason, and the process ends at start-up. A broker that cannot be reached at all is left
to the client (and retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tollgate_core.errors import ConfigurationError
from tollgate_core.settings import KafkaSettings

_TIMEOUT_S = 10.0


async def verify_tls(settings: KafkaSettings) -> None:
    """Complete one TLS handshake with the first reachable bootstrap server (no-op for a
    plaintext protocol); raise ConfigurationError if its certificate does not verify or it
    refuses ours."""
    context = settings.ssl_context()
    if context is None:
        return
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    host, int(port), ssl=context, server_hostname=host
                )
        except ssl.SSLCertVerificationError as exc:
            ca = settings.ssl_cafile or "the system trust store"
            raise ConfigurationError(
                f"Kafka TLS: the certificate of {server} does not verify against {ca} "
                f"(KAFKA_SSL_CAFILE): {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            raise ConfigurationError(f"Kafka TLS handshake with {server} failed: {exc}") from exc
        except (OSError, TimeoutError):
            continue  # unreachable: the client's own retry reports it
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        del reader
        return
