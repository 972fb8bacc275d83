"""Why the auth service refuses a caller. Each error carries its HTTP status and wire type::

TollgateError
└── AuthError                          refused (``error_type``, ``http_status``)
    ├── Unauthenticated          401   no credential, or one that does not verify
    │   ├── InvalidToken               bad signature, algorithm, issuer, audience, kid …
    │   ├── TokenExpired               ``exp`` passed / ``nbf`` not reached
    │   └── InvalidApiKey              unknown, revoked or expired key
    └── Forbidden                403   a valid caller asking for what it may not
        ├── ChannelDenied              another user's channel, a wildcard, a wrong namespace
        └── ModelNotAllowed            a model none of the caller's groups allows
"""

from __future__ import annotations

from typing import ClassVar

from tollgate_core.errors import TollgateError


class AuthError(TollgateError):
    error_type: ClassVar[str] = "unauthorized"
    http_status = 401


class Unauthenticated(AuthError):
    error_type: ClassVar[str] = "unauthenticated"
    http_status = 401


class InvalidToken(Unauthenticated):
    error_type: ClassVar[str] = "invalid_token"


class TokenExpired(Unauthenticated):
    error_type: ClassVar[str] = "token_expired"


class InvalidApiKey(Unauthenticated):
    error_type: ClassVar[str] = "invalid_api_key"


class Forbidden(AuthError):
    error_type: ClassVar[str] = "forbidden"
    http_status = 403


class ChannelDenied(Forbidden):
    error_type: ClassVar[str] = "channel_denied"


class ModelNotAllowed(Forbidden):
    error_type: ClassVar[str] = "model_not_allowed"
