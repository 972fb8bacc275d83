"""Errors the edge returns to clients, in AppSync's vocabulary.

TollgateError
├── AppSyncError           errorType + errorCode as AppSync reports them
└── OpenAIError            HTTP status + ``{"error":{"message","type","param","code"}}``
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

    @classmethod
    def timeout(cls, message: str) -> AppSyncError:
        return cls("TimeoutException", message, 408)

    @classmethod
    def unsupported(cls, message: str) -> AppSyncError:
        return cls("UnsupportedOperation", message, 400)

    @classmethod
    def unknown_operation(cls, message: str) -> AppSyncError:
        return cls("UnknownOperationError", message, 400)


class OpenAIError(TollgateError):
    """An error of the OpenAI-compatible API, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    @classmethod
    def bad_request(cls, message: str, *, param: str | None = None) -> OpenAIError:
        return cls(400, message, param=param)

    @classmethod
    def unauthorized(cls, message: str, code: str | None = "invalid_api_key") -> OpenAIError:
        return cls(401, message, code=code)

    @classmethod
    def forbidden(cls, message: str, code: str | None = None) -> OpenAIError:
        return cls(403, message, type_="permission_error", code=code)

    @classmethod
    def unavailable(cls, message: str, code: str | None = "service_unavailable") -> OpenAIError:
        return cls(503, message, type_="server_error", code=code)
