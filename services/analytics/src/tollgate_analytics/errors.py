"""Analytics errors::

TollgateError (tollgate_core.errors)
├── ContractError
│   └── RowNotRepresentable  a valid record with a value its Parquet column cannot hold
├── DependencyUnavailable
│   └── StorageUnavailable   the dataset's disk or bucket refuses a write or a listing
└── RequestError             refused HTTP requests, typed by ``error_type``
    ├── QueryError           SQL DuckDB refuses (syntax, unknown column, ...)
    │   ├── QueryTimeout     the query ran past the statement timeout and was interrupted
    │   └── ResultTooLarge   the result has more rows than the cap
    ├── Unauthenticated      no or a wrong admin bearer token (tollgate_core.errors)
    └── AdminDisabled        a data endpoint, with no admin token configured
"""

from __future__ import annotations

from typing import ClassVar

from tollgate_core.errors import ContractError, DependencyUnavailable, RequestError


class StorageUnavailable(DependencyUnavailable):
    """The dataset's storage (local disk or S3) cannot be written or listed right now."""


class RowNotRepresentable(ContractError):
    """A record matches its contract, but a value is out of its Parquet column's range (an
    int32 overflow, a cost of 10^10 USD or more); the record is dead-lettered."""


class QueryError(RequestError):
    """A query DuckDB refuses (syntax, unknown column, ...)."""


class QueryTimeout(QueryError):
    error_type: ClassVar[str] = "query_timeout"
    http_status = 504


class ResultTooLarge(QueryError):
    error_type: ClassVar[str] = "result_too_large"
    http_status = 400


class AdminDisabled(RequestError):
    error_type: ClassVar[str] = "admin_disabled"
    http_status = 403
