"""Analytics errors::

TollgateError (tollgate_core.errors)
├── ContractError
│   └── RowNotRepresentable  a valid record with a value its Parquet column cannot hold
└── DependencyUnavailable
    └── StorageUnavailable   the dataset's disk or bucket refuses a write or a listing
"""

from __future__ import annotations

from tollgate_core.errors import ContractError, DependencyUnavailable


class StorageUnavailable(DependencyUnavailable):
    """The dataset's storage (local disk or S3) cannot be written or listed right now."""


class RowNotRepresentable(ContractError):
    """A record matches its contract, but a value is out of its Parquet column's range (an
    int32 overflow, a cost of 10^10 USD or more); the record is dead-lettered."""
