"""The router's errors. Provider adapters translate every upstream failure into one of these
where it enters, so the resilience layer and the handler decide on class attributes only::

    TollgateError (tollgate_core.errors)
    └── ProviderError              a model provider failed; ``error_type`` is the wire type
        ├── ProviderThrottled      429 / throttlingException              (retriable)
        ├── ProviderUnavailable    5xx, connection refused, stream error  (retriable, falls back)
        │   └── CircuitOpen        the provider's breaker is open         (falls back, no retry)
        ├── ProviderTimeout        connect / first token / idle gap / total (retriable)
        ├── InvalidProviderRequest 400 / validationException
        └── ModelNotFound          404 / unknown model / not allowed for the caller's groups

``retriable`` means "the same call may succeed if repeated"; ``fallback`` means "another model
of the fallback chain may succeed". Neither applies once the first token has been sent.
"""

from __future__ import annotations

from typing import ClassVar, Self

from tollgate_core.contracts import Usage
from tollgate_core.errors import TollgateError


class ProviderError(TollgateError):
    error_type: ClassVar[str] = "provider_error"
    http_status = 502
    fallback: ClassVar[bool] = False
    #: counts against the provider's circuit breaker
    breaker_failure: ClassVar[bool] = False
    #: the usage the provider reported for the failed attempt before it failed (Anthropic's
    #: ``message_start`` before an ``error`` event): what it bills for the attempt. None when
    #: it reported none — an HTTP error, or a stream whose usage comes only at its end
    #: (OpenAI, Bedrock) — and then the attempt is settled at zero
    reported_usage: Usage | None = None

    def with_usage(self, usage: Usage | None) -> Self:
        self.reported_usage = usage
        return self


class ProviderThrottled(ProviderError):
    retriable: ClassVar[bool] = True
    fallback: ClassVar[bool] = True
    error_type: ClassVar[str] = "provider_throttled"
    http_status = 429


class ProviderUnavailable(ProviderError):
    retriable: ClassVar[bool] = True
    fallback: ClassVar[bool] = True
    breaker_failure: ClassVar[bool] = True
    error_type: ClassVar[str] = "provider_unavailable"
    http_status = 503


class CircuitOpen(ProviderUnavailable):
    retriable: ClassVar[bool] = False
    breaker_failure: ClassVar[bool] = False
    error_type: ClassVar[str] = "provider_unavailable"


class ProviderTimeout(ProviderError):
    retriable: ClassVar[bool] = True
    fallback: ClassVar[bool] = True
    breaker_failure: ClassVar[bool] = True
    error_type: ClassVar[str] = "provider_timeout"
    http_status = 504


class InvalidProviderRequest(ProviderError):
    error_type: ClassVar[str] = "validation_error"
    http_status = 400


class RequestExpired(ProviderError):
    """Admitted too long ago: its reservation may already have been released, so running it
    could exceed the caller's limits. The client may send it again."""

    retriable: ClassVar[bool] = True
    error_type: ClassVar[str] = "request_expired"
    http_status = 503


class ModelNotFound(ProviderError):
    error_type: ClassVar[str] = "model_not_found"
    http_status = 404


class ModelNotAllowed(ProviderError):
    error_type: ClassVar[str] = "model_not_allowed"
    http_status = 403


def from_http_status(status: int, message: str) -> ProviderError:
    """The error an HTTP status from a provider means (OpenAI-compatible, Anthropic, Bedrock)."""
    if status == 429:
        return ProviderThrottled(message, details={"status": status})
    if status == 404:
        return ModelNotFound(message, details={"status": status})
    if status in (408, 504):
        return ProviderTimeout(message, details={"status": status})
    if status >= 500 or status == 529:
        return ProviderUnavailable(message, details={"status": status})
    return InvalidProviderRequest(message, details={"status": status})


class RequestInProgress(TollgateError):
    """A redelivered request another attempt still holds the lease of: try again later."""

    retriable: ClassVar[bool] = True
    error_type: ClassVar[str] = "request_in_progress"
    http_status = 409
