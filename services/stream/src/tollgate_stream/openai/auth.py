"""Who calls the OpenAI API: the seam between the API and identity verification.

The API hands the bearer credential of every request to a :class:`BearerAuthenticator` and
asks it whether the resulting :class:`Identity` may use the requested model. The production
implementation (JWT via JWKS, API keys, group policy through the auth service) plugs in here
without touching the API; :class:`DevBearerAuthenticator` is the development stand-in.
"""

from __future__ import annotations

from typing import Protocol

from tollgate_stream.errors import AppSyncError, OpenAIError
from tollgate_stream.identity import AuthServiceAuthorizer, Identity

MAX_PRINCIPAL_CHARS = 128


class BearerAuthenticator(Protocol):
    async def identify(self, token: str) -> Identity:
        """The identity behind a bearer token (API key or JWT), or raise
        :class:`OpenAIError` (401 for a bad credential)."""
        ...

    async def authorize_model(self, identity: Identity, model: str) -> None:
        """Return if ``identity`` may call ``model``, else raise :class:`OpenAIError` (403)."""
        ...


class DevBearerAuthenticator:
    """Development authenticator: trusts any non-empty bearer token and allows every model.

    The principal is ``principal`` when one is configured, otherwise the token itself, so two
    local clients with different tokens are two users. It verifies nothing.
    """

    def __init__(self, principal: str | None = None) -> None:
        self._principal = principal

    async def identify(self, token: str) -> Identity:
        if not token:
            raise OpenAIError.unauthorized("Empty bearer token.")
        return Identity(principal=self._principal or token[:MAX_PRINCIPAL_CHARS])

    async def authorize_model(self, identity: Identity, model: str) -> None:
        return None


def bearer_token(authorization: str | None) -> str:
    """The credential of an ``Authorization: Bearer <token>`` header, or a 401."""
    if not authorization:
        raise OpenAIError.unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code=None
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OpenAIError.unauthorized("The Authorization header must be 'Bearer <key>'.")
    return token.strip()


class AuthServiceBearerAuthenticator:
    """The production authenticator: the auth service verifies the bearer credential (a JWT
    from Cognito/OIDC or a Tollgate API key) and says which models the caller's groups allow."""

    def __init__(self, authorizer: AuthServiceAuthorizer) -> None:
        self._authorizer = authorizer

    async def identify(self, token: str) -> Identity:
        try:
            return await self._authorizer.authenticate({"authorization": f"Bearer {token}"})
        except AppSyncError as exc:
            if exc.http_status == 401:
                raise OpenAIError.unauthorized(exc.message) from exc
            if exc.http_status == 403:
                raise OpenAIError.forbidden(exc.message) from exc
            raise OpenAIError.unavailable(exc.message) from exc

    async def authorize_model(self, identity: Identity, model: str) -> None:
        if not identity.allows(model):
            raise OpenAIError.forbidden(
                f"Your groups do not allow the model '{model}'.", code="model_not_allowed"
            )
