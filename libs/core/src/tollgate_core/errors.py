"""Tollgate's error tree.

Every error a service raises on purpose derives from :class:`TollgateError`. Errors carry
their behaviour as class attributes (``retriable``, ``error_type``, ``http_status``), so
callers never match strings::

    TollgateError
    ├── ConfigurationError        bad settings; the process cannot start
    ├── ContractError             a payload does not match its event contract
    │   └── UnsupportedSchemaError   a known payload with an unknown schema version
    ├── DependencyUnavailable     Kafka, Postgres or another service cannot be reached (retriable)
    └── RequestError              a client request that is refused; ``error_type`` is the wire type
        ├── RecordTooLarge        an event larger than a Kafka record may be (retrying cannot help)
        ├── Unauthenticated       401: no credential, or one that does not verify
        ├── Forbidden             403: a known caller asking for what it may not
        └── NotFound              404: no such thing

Every HTTP service answers them as ``{"error": {"type", "message"[, "details"]}}``
(:func:`tollgate_core.http.error_response`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class TollgateError(Exception):
    """Root of every error Tollgate raises on purpose."""

    retriable: ClassVar[bool] = False
    error_type: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ConfigurationError(TollgateError):
    """Settings are missing or inconsistent; the process cannot start."""


class ContractError(TollgateError):
    """A payload does not decode into its event contract."""

    error_type: ClassVar[str] = "validation_error"
    http_status: ClassVar[int] = 400


class UnsupportedSchemaError(ContractError):
    """The payload names a schema (or schema version) this consumer does not accept."""


class DependencyUnavailable(TollgateError):
    """A dependency (Kafka, Postgres, a peer service) cannot be reached right now."""

    retriable: ClassVar[bool] = True
    error_type: ClassVar[str] = "service_unavailable"
    http_status: ClassVar[int] = 503


class RequestError(TollgateError):
    """A client request that Tollgate refuses; ``error_type`` is what the client sees."""

    error_type: ClassVar[str] = "validation_error"
    http_status: ClassVar[int] = 400


class RecordTooLarge(RequestError):
    """An event whose record exceeds the Kafka record limit: never retried."""

    http_status: ClassVar[int] = 413


class Unauthenticated(RequestError):
    """No credential, or one that does not verify."""

    error_type: ClassVar[str] = "unauthorized"
    http_status: ClassVar[int] = 401


class Forbidden(RequestError):
    """A known caller asking for what it may not."""

    error_type: ClassVar[str] = "forbidden"
    http_status: ClassVar[int] = 403


class NotFound(RequestError):
    error_type: ClassVar[str] = "not_found"
    http_status: ClassVar[int] = 404
