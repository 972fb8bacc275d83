"""AWS MSK IAM authentication: SASL/OAUTHBEARER with a token that AWS's own signer
(``aws-msk-iam-sasl-signer-python``) builds from the default credential chain (environment,
IRSA web identity, instance profile…)."""

from __future__ import annotations

import asyncio
import time

from aiokafka.abc import AbstractTokenProvider
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # type: ignore[import-untyped]

#: a token is renewed this long before it expires (they live 15 minutes)
_RENEW_BEFORE_S = 60.0


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """Hands aiokafka a signed token, reusing it until shortly before it expires. Signing may
    ask the instance metadata service for credentials, so it runs off the event loop."""

    def __init__(self, region: str) -> None:
        self._region = region
        self._token = ""
        self._expires_at = 0.0

    async def token(self) -> str:
        if time.time() >= self._expires_at - _RENEW_BEFORE_S:
            token, expiry_ms = await asyncio.to_thread(
                MSKAuthTokenProvider.generate_auth_token, self._region
            )
            self._token, self._expires_at = str(token), int(expiry_ms) / 1000
        return self._token
