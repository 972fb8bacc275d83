"""Errors the edge returns to clients, in AppSync's vocabulary.

TollgateError
└── AppSyncError           errorType + errorCode as AppSync reports them
"""

from __future__ import annotations

from typing import Any

from tollgate_core.errors import TollgateError


class AppSyncError(TollgateError):
    def __init__(self, error_type: str, message: str, code: int) -> None:
        super().__init__(message)
        self.appsync_type = error_type
        self.code = code

    def as_error(self) -> dict[str, Any]:
        return {"errorType": self.appsync_type, "errorCode": self.code, "message": self.message}

    @classmethod
    def bad_request(cls, message: str) -> AppSyncError:
        return cls("BadRequestException", message, 400)

    @classmethod
    def unauthorized(
        cls, message: str = "You are not authorized to make this call."
    ) -> AppSyncError:
        return cls("UnauthorizedException", message, 401)

    @classmethod
    def forbidden(cls, message: str) -> AppSyncError:
        return cls("Unauthorized", message, 403)

    @classmethod
    def unavailable(cls, message: str) -> AppSyncError:
        return cls("ServiceUnavailableException", message, 503)

    @classmethod
    def limit(cls, message: str) -> AppSyncError:
        return cls("LimitExceededException", message, 400)
